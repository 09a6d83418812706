"""Top-down pose model (backbone + head) and the builder from a config."""
from __future__ import annotations

import torch
from torch import nn

from pose.config import ModelConfig
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


def build_model(cfg: ModelConfig) -> nn.Module:
    """The pose network, or (``type: classifier``) an ImageNet-style MobileNetV2 classifier."""
    b = cfg.backbone
    if cfg.type == "classifier":
        return MobileNetV2(b.width_mult, b.act, final_conv=True, num_classes=cfg.num_classes)
    backbone = MobileNetV2(b.width_mult, b.act, final_conv=b.final_conv)
    h = cfg.head
    head = UpsampleIRHead(backbone.out_channels, h.channels, h.blocks_per_stage, h.expand_ratio,
                          h.act, cfg.num_keypoints)
    return TopDownPoseNet(backbone, head)
