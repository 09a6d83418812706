import pytest
import torch
from torch import nn

from pose.models.activations import ACTIVATIONS, DyReLU, make_activation
from pose.models.dyrelu_function import piecewise_max


def reference_dyrelu(module: DyReLU, x: torch.Tensor) -> torch.Tensor:
    """DY-ReLU straight from the paper's formulas, materialising (N, C, H, W, K)."""
    n, c, h, w = x.shape
    k = module.k
    context = x.mean(dim=(2, 3))
    hidden = torch.relu(context @ module.fc1.weight.T + module.fc1.bias)
    theta = 2 * torch.sigmoid(hidden @ module.fc2.weight.T + module.fc2.bias) - 1
    groups = 1 if module.variant == "a" else c
    theta = theta.reshape(n, groups, 2, k).expand(n, c, 2, k)  # A: shared by every channel
    alpha = torch.tensor([1.0] + [0.0] * (k - 1), dtype=x.dtype)
    beta = torch.zeros(k, dtype=x.dtype)
    res_a = module.lambda_a * theta[:, :, 0]  # (N, C, K)
    res_b = module.lambda_b * theta[:, :, 1]
    a = (alpha + res_a)[:, :, None, None, :].expand(n, c, h, w, k)
    b = (beta + res_b)[:, :, None, None, :].expand(n, c, h, w, k)
    if module.variant == "c":
        z = torch.einsum("nchw,c->nhw", x, module.spatial_conv.weight[0, :, 0, 0])
        z = z + module.spatial_conv.bias
        soft = torch.softmax(z.reshape(n, h * w) / module.tau, dim=1).reshape(n, 1, h, w, 1)
        pi = torch.clamp(module.gamma * h * w * soft, max=1.0)
        if module.spatial == "coefficient":
            a, b = pi * a, pi * b
        else:
            a = alpha + pi * res_a[:, :, None, None, :]
            b = beta + pi * res_b[:, :, None, None, :]
    return (a * x[..., None] + b).max(dim=-1).values


def randomised(module: DyReLU) -> DyReLU:
    # Large random hyper-function weights so the residuals are far from zero.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 1.0)
    return module


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("k", [2, 3])
def test_dyrelu_matches_formula_reference(variant, k):
    torch.manual_seed(0)
    module = randomised(DyReLU(8, variant=variant, k=k, reduction=2)).double()
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(module(x), reference_dyrelu(module, x))


@pytest.mark.parametrize("k", [2, 3])
def test_dyrelu_c_residual_mode_matches_reference(k):
    torch.manual_seed(1)
    module = randomised(DyReLU(6, variant="c", k=k, reduction=2, spatial="residual")).double()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x), reference_dyrelu(module, x))


def test_dyrelu_a_coefficients_are_shared_across_channels():
    torch.manual_seed(2)
    module = randomised(DyReLU(4, variant="a", reduction=1))
    a, b = module.coefficients(torch.randn(2, 4, 3, 3))
    assert a.shape == (2, 1, 2) and b.shape == (2, 1, 2)


@pytest.mark.parametrize("variant,spatial", [("a", "coefficient"), ("b", "coefficient"),
                                             ("c", "residual")])
def test_dyrelu_with_relu_init_equals_relu_exactly(variant, spatial):
    torch.manual_seed(3)
    module = DyReLU(16, variant=variant, init="relu", spatial=spatial)
    x = torch.randn(2, 16, 7, 5)
    assert torch.equal(module(x), nn.ReLU()(x))


def test_dyrelu_c_with_relu_init_is_relu_scaled_by_uniform_attention():
    module = DyReLU(16, variant="c", init="relu")
    nn.init.zeros_(module.spatial_conv.weight)
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(module(x), torch.relu(x) / 3)  # pi = min(HW/3 * 1/HW, 1)


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("k", [2, 3])
def test_dyrelu_gradients_pass_gradcheck(variant, k):
    torch.manual_seed(4)
    module = randomised(DyReLU(4, variant=variant, k=k, reduction=2)).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 5])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("with_scale", [False, True])
def test_piecewise_max_gradcheck_all_inputs(groups, k, with_scale):
    torch.manual_seed(5)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, groups, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, groups, k, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(2, 1, 3, 4, dtype=torch.float64) + 0.1).requires_grad_(with_scale)
    inputs = (x, a, b, scale if with_scale else None)
    assert torch.autograd.gradcheck(piecewise_max, inputs, eps=1e-6, atol=1e-5)


def test_piecewise_max_saves_no_k_sized_tensor_for_backward():
    x = torch.randn(4, 8, 16, 12, requires_grad=True)
    a = torch.randn(4, 8, 3, requires_grad=True)
    b = torch.randn(4, 8, 3, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        piecewise_max(x, a, b)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].shape == x.shape  # only x itself


def test_piecewise_max_keeps_channels_last():
    x = torch.randn(2, 8, 6, 4).to(memory_format=torch.channels_last)
    y = piecewise_max(x, torch.randn(2, 8, 2), torch.randn(2, 8, 2))
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_builds_and_keeps_shape(name):
    module = make_activation(name, 8)
    x = torch.randn(2, 8, 4, 4)
    assert module(x).shape == x.shape


def test_activation_mapping_spec_passes_options():
    module = make_activation({"name": "dyrelu_c", "k": 3, "reduction": 2, "tau": 5.0}, 8)
    assert (module.k, module.fc1.out_features, module.tau) == (3, 4, 5.0)
    assert make_activation({"name": "prelu"}, 6).weight.numel() == 6
    assert make_activation("prelu_shared", 6).weight.numel() == 1


def test_unknown_activation_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown activation 'dyrelu_d'.*dyrelu_c"):
        make_activation("dyrelu_d", 8)


def test_unknown_activation_option_lists_valid_options():
    with pytest.raises(ValueError, match="unknown option.*'kk'|kk.*valid options: k, reduction"):
        make_activation({"name": "dyrelu_b", "kk": 3}, 8)
    with pytest.raises(ValueError, match="valid options: none"):
        make_activation({"name": "relu", "k": 3}, 8)


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_dyrelu_runs_under_bf16_autocast_close_to_float32(variant):
    torch.manual_seed(6)
    module = randomised(DyReLU(16, variant=variant, reduction=4))
    x = torch.randn(2, 16, 8, 6, requires_grad=True)
    reference = module(x)
    reference.sum().backward()
    reference_grad, x.grad = x.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x.to(torch.bfloat16))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, atol=0.1, rtol=0.05)
    # Near a kink, bf16 rounding can pick the other piece: the slope there jumps. Elsewhere
    # the input gradient matches float32.
    flipped = ~torch.isclose(x.grad, reference_grad, atol=0.1, rtol=0.05)
    assert flipped.float().mean() < 0.01
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
