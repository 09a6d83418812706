"""MobileNetV2 (Sandler et al., 2018) with the activation slot at every non-linear position.

Built from the paper's (t, c, n, s) table like torchvision's model: stem 3x3 conv, 17 inverted
residual blocks (1x1 expand -> act -> 3x3 depthwise -> act -> 1x1 linear projection), final
1x1 conv. Every activation is the slot's (``make_activation``), and the conv in front of it
produces the channels the slot asks for (``pieces``: K per channel for Maxout); projections
stay linear unless the slot takes them too (a Maxout option, Table 1's reading).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn
from torchvision.models.mobilenetv2 import _make_divisible
from torchvision.ops.misc import Conv2dNormActivation

from pose.activation_spec import parse_activation
from pose.models.activations import make_activation, pieces

ActSpec = Any  # a name or a mapping, see pose.models.activations

# t: expansion, c: output channels (x1.0), n: repeats, s: stride of the first repeat
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, act: ActSpec,
                  stride: int = 1, groups: int = 1) -> Conv2dNormActivation:
    """conv -> BatchNorm -> the slot's activation (torchvision's block, our activation), with
    ``out_channels`` out of the activation; a grouped conv is a depthwise position."""
    position = "depthwise" if groups > 1 else "conv"
    return Conv2dNormActivation(
        in_channels, out_channels * pieces(act, position), kernel_size, stride=stride,
        groups=groups, activation_layer=partial(make_activation, act, out_channels, position),
        inplace=None)


class InvertedResidual(nn.Module):
    """1x1 expand -> act -> 3x3 depthwise -> act -> 1x1 linear projection (+ identity)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float,
                 act: ActSpec) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_norm_act(in_channels, hidden, 1, act))
        projected = out_channels * pieces(act, "projection")
        layers += [
            conv_norm_act(hidden, hidden, 3, act, stride=stride, groups=hidden),
            nn.Conv2d(hidden, projected, 1, bias=False),
            nn.BatchNorm2d(projected),
        ]
        if projected != out_channels:  # the slot takes the projection too (Maxout's option)
            layers.append(make_activation(act, out_channels, "projection"))
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor (stride 32), optionally with a classifier on top.

    Args:
        width_mult: channel multiplier (0.5 for the pose backbone, 1.0 for ImageNet).
        act: the activation slot's spec, used at every non-linear position.
        final_conv: keep the final 1x1 conv to ``last_channels`` (mmpose's pose backbone
            and torchvision's classifier do).
        last_channels: width of the final conv; like torchvision, it is not shrunk for
            width_mult < 1.
        num_classes: add global pooling, dropout and a linear classifier when given.
    """

    def __init__(self, width_mult: float = 1.0, act: ActSpec = "relu6", final_conv: bool = True,
                 last_channels: int = 1280, num_classes: Optional[int] = None,
                 dropout: float = 0.2) -> None:
        super().__init__()
        act = parse_activation(act)  # once, for every block
        channels = _make_divisible(32 * width_mult, 8)
        layers: list[nn.Module] = [conv_norm_act(3, channels, 3, act, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_channels = _make_divisible(c * width_mult, 8)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t, act))
                channels = out_channels
        if final_conv:
            last = _make_divisible(last_channels * max(1.0, width_mult), 8)
            layers.append(conv_norm_act(channels, last, 1, act))
            channels = last
        self.features = nn.Sequential(*layers)
        self.out_channels = channels
        self.classifier = None
        if num_classes is not None:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's MobileNetV2 initialisation. Linear layers (DY-ReLU's hyper functions)
        # are left alone so that DY-ReLU's init: relu keeps its zeroed last layer.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, out_channels, H/32, W/32)
        if self.classifier is None:
            return x
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
