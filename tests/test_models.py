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


# Table 1's other activations in the slot: SE + ReLU and Maxout.
NEW_ACTS = ["se_relu", {"name": "maxout", "k": 2}, {"name": "maxout", "k": 3},
            {"name": "maxout", "k": 2, "depthwise": "maxout", "projection": False},
            {"name": "maxout", "k": 3, "depthwise": "maxout", "projection": False}]


@pytest.mark.parametrize("act", NEW_ACTS, ids=lambda a: a if isinstance(a, str) else
                         "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("side", ["backbone", "head"])
def test_se_and_maxout_train_in_the_backbone_and_the_head(act, side):
    torch.manual_seed(0)
    model = build_model(pose_config(act if side == "backbone" else "relu",
                                    act if side == "head" else "relu"))
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 17, 16, 16)
    y.square().mean().backward()
    grads = [p.grad for p in getattr(model, side).parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def conv_bn(conv_norm_act_block):
    conv, bn = conv_norm_act_block[0], conv_norm_act_block[1]
    return lambda x: bn(conv(x))


def test_maxout_takes_the_maximum_of_k_pieces_from_the_layer_in_front():
    from pose.models.mobilenetv2 import conv_norm_act

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4)
    for k in (2, 3):
        dense = conv_norm_act(6, 8, 1, {"name": "maxout", "k": k}).eval()
        assert dense[0].out_channels == 8 * k
        pieces = conv_bn(dense)(x)
        expected = torch.stack([pieces[:, c * k:(c + 1) * k].max(1).values for c in range(8)], 1)
        torch.testing.assert_close(dense(x), expected, rtol=0, atol=0)
        # a depthwise maxout: K filters of each channel, and the unit takes their maximum
        spec = {"name": "maxout", "k": k, "depthwise": "maxout"}
        depthwise = conv_norm_act(6, 6, 3, spec, groups=6).eval()
        weight = depthwise[0].weight  # (6K, 1, 3, 3)
        per_filter = [nn.functional.conv2d(x[:, c:c + 1], weight[c * k + j:c * k + j + 1],
                                           padding=1) for c in range(6) for j in range(k)]
        bn = depthwise[1]
        scaled = [(p - bn.running_mean[i]) / torch.sqrt(bn.running_var[i] + bn.eps)
                  * bn.weight[i] + bn.bias[i] for i, p in enumerate(per_filter)]
        expected = torch.cat([torch.stack(scaled[c * k:(c + 1) * k]).max(0).values
                              for c in range(6)], 1)
        torch.testing.assert_close(depthwise(x), expected)


def test_maxout_with_one_piece_is_the_plain_linear_layer():
    from pose.models.mobilenetv2 import InvertedResidual, conv_norm_act

    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 4)
    block = conv_norm_act(8, 12, 1, {"name": "maxout", "k": 1}).eval()
    assert block[0].out_channels == 12
    torch.testing.assert_close(block(x), conv_bn(block)(x), rtol=0, atol=0)
    # in a block: the same parameters as a ReLU block, the projection still linear
    maxout = InvertedResidual(8, 8, 1, 4, {"name": "maxout", "k": 1})
    relu = InvertedResidual(8, 8, 1, 4, "relu")
    assert [p.shape for p in maxout.parameters()] == [p.shape for p in relu.parameters()]


def test_se_relu_is_relu_times_a_squeeze_and_excitation_gate():
    from pose.models.activations import make_activation

    torch.manual_seed(0)
    module = make_activation({"name": "se_relu", "reduction": 4}, 16)
    x = torch.randn(2, 16, 5, 4)
    se = module[1]
    fc1, fc2 = se.fc1.weight.flatten(1), se.fc2.weight.flatten(1)  # (4, 16), (16, 4)
    assert fc1.shape == (4, 16)
    r = x.clamp(min=0)
    pooled = r.mean((2, 3))
    gate = torch.sigmoid(torch.relu(pooled @ fc1.T + se.fc1.bias) @ fc2.T + se.fc2.bias)
    torch.testing.assert_close(module(x), r * gate[:, :, None, None])


def test_maxout_positions_in_the_table1_reading():
    from pose.models.activations import Maxout

    model = MobileNetV2(1.0, {"name": "maxout", "k": 2})
    blocks = model.features[1:-1]
    # stem, 16 expansions, final conv and all 17 projections; depthwise convs keep a ReLU
    assert sum(isinstance(m, Maxout) for m in model.modules()) == 1 + 16 + 1 + 17
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 17
    assert all(isinstance(block.conv[-1], Maxout) for block in blocks)
    slot = MobileNetV2(1.0, {"name": "maxout", "k": 2, "depthwise": "maxout",
                             "projection": False})
    assert sum(isinstance(m, Maxout) for m in slot.modules()) == 35
    assert all(isinstance(block.conv[-1], nn.BatchNorm2d) for block in slot.features[1:-1])


def test_bad_maxout_or_se_options_are_errors_naming_them():
    with pytest.raises(ValueError, match="option 'depthwise' of activation 'maxout' must be one "
                                         "of relu, maxout, got 'gelu'"):
        MobileNetV2(0.5, {"name": "maxout", "depthwise": "gelu"})
    with pytest.raises(ValueError, match="maxout k must be >= 1, got 0"):
        MobileNetV2(0.5, {"name": "maxout", "k": 0})
    with pytest.raises(ValueError, match="reduction must be > 0"):
        MobileNetV2(0.5, {"name": "se_relu", "reduction": 0})
