"""Pose head: bilinear x2 upsampling + inverted-residual blocks, instead of deconvolutions.

From stride-32 backbone features to K heatmaps at stride 4 (64x48 for a 256x192 crop):
a 1x1 conv reduces the backbone's width, then three stages of (upsample x2 -> inverted
residual blocks), then a 1x1 conv to the heatmaps. Every activation is the head's slot.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from pose.activation_spec import parse_activation
from pose.models.mobilenetv2 import InvertedResidual, conv_norm_act


class UpsampleIRHead(nn.Module):
    """Args:
        in_channels: backbone output width.
        channels: width of each upsampling stage (one stage per entry, each x2).
        blocks_per_stage: inverted residual blocks after each upsampling.
        expand_ratio: the blocks' expansion t (hidden width = t * block input width).
        act: the head's activation slot spec.
        num_keypoints: heatmaps out.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (128, 64, 32),
                 blocks_per_stage: int = 2, expand_ratio: float = 4, act: Any = "relu",
                 num_keypoints: int = 17) -> None:
        super().__init__()
        if blocks_per_stage < 1 or not channels:
            raise ValueError("head needs at least one stage and one block per stage")
        act = parse_activation(act)  # once, for every block
        self.reduce = conv_norm_act(in_channels, channels[0], 1, act)
        stages: list[nn.Module] = []
        width = channels[0]
        for out_channels in channels:
            blocks: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="bilinear",
                                                   align_corners=False)]
            for _ in range(blocks_per_stage):
                blocks.append(InvertedResidual(width, out_channels, 1, expand_ratio, act))
                width = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Conv2d(width, num_keypoints, kernel_size=1)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C_in, H/32, W/32) -> (N, K, H/4, W/4)
        return self.final(self.stages(self.reduce(x)))
