"""Top-down pose model (backbone + head) and the builder from a config."""
from __future__ import annotations

import torch
from torch import nn

from typing import Optional

from pose.config import ConfigError, ModelConfig
from pose.data.keypoints import NUM_KEYPOINTS
from pose.models.head import UpsampleIRHead
from pose.models.mobilenetv2 import MobileNetV2


class TopDownPoseNet(nn.Module):
    """Person crop (N, 3, H, W) -> keypoint heatmaps (N, K, H/4, W/4)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(cfg: ModelConfig, num_keypoints: Optional[int] = None,
                source: str = "the data") -> nn.Module:
    """The pose network, or (``type: classifier``) an ImageNet-style MobileNetV2 classifier.

    Heatmaps: ``num_keypoints`` (the keypoint set of ``source``: the data, or a checkpoint),
    else ``cfg.num_keypoints``, else COCO's 17; the two must agree where both are given."""
    b = cfg.backbone
    if cfg.type == "classifier":
        return MobileNetV2(b.width_mult, b.act, final_conv=True,
                           num_classes=cfg.num_classes or 1000, dropout=cfg.dropout)
    if num_keypoints and cfg.num_keypoints and num_keypoints != cfg.num_keypoints:
        raise ConfigError(f"config key 'model.num_keypoints': {cfg.num_keypoints}, but {source} "
                          f"has {num_keypoints} keypoints (leave it unset to follow "
                          f"{'the data' if source == 'the data' else 'it'})")
    backbone = MobileNetV2(b.width_mult, b.act, final_conv=b.final_conv)
    h = cfg.head
    head = UpsampleIRHead(backbone.out_channels, h.channels, h.blocks_per_stage, h.expand_ratio,
                          h.act, num_keypoints or cfg.num_keypoints or NUM_KEYPOINTS)
    return TopDownPoseNet(backbone, head)
