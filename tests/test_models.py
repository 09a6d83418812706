import itertools

import pytest
import torch
from torch import nn

from pose.config import ModelConfig
from pose.models import DyReLU, build_model
from pose.models.mobilenetv2 import MobileNetV2

ACTS = ["relu", "dyrelu_a", "dyrelu_b", "dyrelu_c"]


def pose_config(backbone_act, head_act) -> ModelConfig:
    cfg = ModelConfig()
    cfg.backbone.act, cfg.head.act = backbone_act, head_act
    return cfg


@pytest.mark.parametrize("backbone_act,head_act", list(itertools.product(ACTS, ACTS)))
def test_every_pairing_maps_256x192_crop_to_64x48_heatmaps(backbone_act, head_act):
    torch.manual_seed(0)
    model = build_model(pose_config(backbone_act, head_act))
    x = torch.randn(2, 3, 256, 192)
    y = model(x)
    assert y.shape == (2, 17, 64, 48)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def slot_activations(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, DyReLU))]


def test_backbone_has_the_slot_at_all_35_positions_and_linear_projections():
    model = MobileNetV2(1.0, "dyrelu_b")
    # stem + block 1 (dw only) + 16 blocks x (expand, dw) + final conv = 35
    assert len(slot_activations(model)) == 35
    for block in model.features[1:-1]:
        projection_bn = block.conv[-1]
        assert isinstance(projection_bn, nn.BatchNorm2d)  # nothing after the projection


def test_head_uses_its_own_slot_and_backbone_keeps_its_own():
    model = build_model(pose_config("relu", "dyrelu_c"))
    assert not any(isinstance(m, DyReLU) for m in model.backbone.modules())
    head_dyrelus = [m for m in model.head.modules() if isinstance(m, DyReLU)]
    assert head_dyrelus and all(m.variant == "c" for m in head_dyrelus)
