import pytest
import torch
from torch import nn

from pose.models import dyrelu_function, dyrelu_native
from pose.models.activations import ACTIVATIONS, DyReLU, make_activation


@pytest.fixture(params=["native", "compiled"])
def layer_path(request, monkeypatch):
    """Run a test through each implementation of the layer: the native CPU kernels and the
    torch.compile'd passes (what CUDA, bfloat16 and channels_last take)."""
    if request.param == "native":
        assert dyrelu_native.library(torch.float64) is not None, "native kernels did not build"

        def compiled_path_taken(*args, **kwargs):
            raise AssertionError("the native path was expected")

        monkeypatch.setattr(dyrelu_function, "_compiled_forward", compiled_path_taken)
        monkeypatch.setattr(dyrelu_function, "_compiled_backward", compiled_path_taken)
        monkeypatch.setenv("POSE_DYRELU_NATIVE", "1")
    else:
        monkeypatch.setenv("POSE_DYRELU_NATIVE", "0")
    return request.param


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
def test_dyrelu_matches_formula_reference(variant, k, layer_path):
    torch.manual_seed(0)
    module = randomised(DyReLU(8, variant=variant, k=k, reduction=2)).double()
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(module(x), reference_dyrelu(module, x))


@pytest.mark.parametrize("k", [2, 3])
def test_dyrelu_c_residual_mode_matches_reference(k, layer_path):
    torch.manual_seed(1)
    module = randomised(DyReLU(6, variant="c", k=k, reduction=2, spatial="residual")).double()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x), reference_dyrelu(module, x))


def test_dyrelu_a_coefficients_are_shared_across_channels():
    torch.manual_seed(2)
    module = randomised(DyReLU(4, variant="a", reduction=1))
    a, b = module.coefficients(torch.randn(2, 4))
    assert a.shape == (2, 1, 2) and b.shape == (2, 1, 2)


@pytest.mark.parametrize("variant,spatial", [("a", "coefficient"), ("b", "coefficient"),
                                             ("c", "residual")])
def test_dyrelu_with_relu_init_equals_relu_exactly(variant, spatial, layer_path):
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
def test_dyrelu_gradients_pass_gradcheck(variant, k, layer_path):
    torch.manual_seed(4)
    module = randomised(DyReLU(4, variant=variant, k=k, reduction=2)).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


CASES = [("a", "coefficient"), ("b", "coefficient"), ("c", "coefficient"), ("c", "residual")]


@pytest.mark.parametrize("variant,spatial", CASES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dyrelu_parameter_and_input_gradients_match_reference(variant, spatial, k, layer_path):
    # The fused layer's hand-written backward against autograd through the formulas.
    torch.manual_seed(5)
    module = randomised(DyReLU(5, variant=variant, k=k, reduction=2, spatial=spatial)).double()
    x = torch.randn(3, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 5, 4, 3, dtype=torch.float64)
    params = [x] + list(module.parameters())
    expected = torch.autograd.grad(reference_dyrelu(module, x), params, grad)
    actual = torch.autograd.grad(module(x), params, grad)
    for name, e, a in zip(["x"] + [n for n, _ in module.named_parameters()], expected, actual):
        torch.testing.assert_close(a, e, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("variant,spatial", CASES)
def test_dyrelu_parameter_gradients_without_an_input_gradient_match_reference(variant, spatial,
                                                                             layer_path):
    # An input that needs no gradient: backward skips the input-gradient pass (and, for C,
    # still forms the 1x1 conv's weight gradient).
    torch.manual_seed(11)
    module = randomised(DyReLU(5, variant=variant, reduction=2, spatial=spatial)).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    grad = torch.randn_like(x)
    params = list(module.parameters())
    expected = torch.autograd.grad(reference_dyrelu(module, x), params, grad)
    for e, a in zip(expected, torch.autograd.grad(module(x), params, grad)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("variant,spatial", CASES)
def test_dyrelu_saves_no_k_sized_tensor_for_backward(variant, spatial, layer_path):
    module = DyReLU(16, variant=variant, k=3, reduction=2, spatial=spatial)
    x = torch.randn(4, 16, 16, 12, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    big = [t for t in saved if t.numel() > x.numel() // 16]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # only x itself
    # Besides x: the pooled context (N, C) and, for variant C, the logits (N, 1, H, W).
    assert sum(t.numel() for t in saved) <= x.numel() * (1 + 1 / 16) + 4 * 16 + 100


def test_dyrelu_gradients_skip_frozen_parameters(layer_path):
    module = randomised(DyReLU(6, variant="c", reduction=2))
    module.fc1.requires_grad_(False)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    module(x).sum().backward()
    assert module.fc1.weight.grad is None and module.fc2.weight.grad is not None
    assert module.spatial_conv.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("variant", ["b", "c"])
def test_dyrelu_keeps_channels_last(variant):
    module = DyReLU(8, variant=variant, reduction=2)
    x = torch.randn(2, 8, 6, 4).to(memory_format=torch.channels_last).requires_grad_()
    y = module(x)
    y.sum().backward()
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, reference_dyrelu(module, x.detach()))


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


@pytest.mark.parametrize("variant", ["b", "c"])
def test_dyrelu_kernels_compile_once_for_every_channel_count(variant, monkeypatch):
    monkeypatch.setenv("POSE_DYRELU_NATIVE", "0")  # the compiled path
    # Per-layer recompiles would hit dynamo's recompile limit in a real model (MobileNetV2
    # has a dozen channel counts) and silently fall back to slow eager kernels.
    def run(channels):
        module = DyReLU(channels, variant=variant, reduction=2)
        x = torch.randn(2, channels, 6, 5, requires_grad=True)
        module(x).sum().backward()
        with torch.no_grad():
            module(x)

    run(8)
    assert not dyrelu_function._Compiled.broken
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for channels in (12, 16, 40):
                run(channels)
        # A recompile raises inside a kernel, which then falls back to eager for good.
        assert not dyrelu_function._Compiled.broken
    finally:
        dyrelu_function._Compiled.broken = False


def test_whole_model_compile_keeps_the_layer_whole_with_the_same_gradients(layer_path):
    # Inside torch.compile the layer is two custom operators (pose::dyrelu and its backward):
    # no graph break, and the compiled model must learn what the eager one learns.
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                          randomised(DyReLU(8, variant="c", reduction=2)), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 6, 5)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.compile(model, backend="aot_eager")(x).square().sum().backward()
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, atol=1e-4, rtol=1e-4)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    assert "torch.ops.pose.dyrelu" in str(explained.graphs[0].code)


class _EveryVariant(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.acts = nn.ModuleList(DyReLU(8, variant=v, reduction=2, spatial=s) for v, s in CASES)
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in CASES)

    def forward(self, x):
        x = self.stem(x)
        for act, conv in zip(self.acts, self.convs):
            x = conv(act(x))
        return x


def test_dyrelu_kernels_share_graphs_across_training_inference_eager_and_compiled(monkeypatch):
    monkeypatch.setenv("POSE_DYRELU_NATIVE", "0")  # the compiled path
    # A compiled function keeps one graph per state it is called in; past its recompile limit
    # it would run eagerly for good. Inference after training, and a compiled model after an
    # eager one, must not add graphs (dyrelu_function._detached, _below_autograd).
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    candidates = [*vars(dyrelu_function).values(), *dyrelu_function._separately_compiled_passes]
    kernels = [k.fn.__code__ for k in candidates if isinstance(k, dyrelu_function._Compiled)]

    def graphs():
        return [len(_debug_get_cache_entry_list(code)) for code in kernels]

    torch.manual_seed(8)
    model = _EveryVariant()
    inputs = [torch.randn(2, 3, 6, 5), torch.randn(2, 3, 80, 64)]  # H*W = 30 and 5120
    for x in inputs:
        model(x).sum().backward()
    trained = graphs()
    with torch.no_grad():
        for x in inputs:
            model(x)
    assert graphs() == trained
    compiled = torch.compile(model)
    for x in inputs:
        compiled(x).sum().backward()
        with torch.no_grad():
            compiled(x)
    assert graphs() == trained
    assert not dyrelu_function._Compiled.broken


@pytest.mark.parametrize("variant,spatial", CASES)
@pytest.mark.parametrize("k", [2, 4])  # K = 2 runs the loops specialised for it; 4 the general
def test_native_and_compiled_paths_agree_in_float32(variant, spatial, k, monkeypatch):
    # H*W = 63: the kernels' 16-wide partial sums and their scalar tails both run. The sizes
    # are above those at which the kernels share a layer's samples, and (for B and C) the
    # parameter gradients' rows, between threads.
    torch.manual_seed(9)
    module = randomised(DyReLU(24, variant=variant, k=k, reduction=1.5, spatial=spatial))
    x = torch.randn(24, 24, 7, 9)
    grad = torch.randn_like(x)
    assert dyrelu_native.library(torch.float32) is not None, "native kernels did not build"
    results = {}
    for path in ("1", "0"):
        monkeypatch.setenv("POSE_DYRELU_NATIVE", path)
        inputs = x.clone().requires_grad_()
        y = module(inputs)
        params = [inputs, *module.parameters()]
        results[path] = (y, *torch.autograd.grad(y, params, grad))
    for native, compiled in zip(results["1"], results["0"]):
        torch.testing.assert_close(native, compiled, atol=1e-4, rtol=1e-4)


def test_native_kernels_that_cannot_build_warn_and_leave_the_compiled_path(monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv("POSE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    dyrelu_native.library.cache_clear()
    try:
        torch.manual_seed(10)
        module = randomised(DyReLU(6, variant="b", reduction=2)).double()
        x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
        with pytest.warns(UserWarning, match="native DY-ReLU kernels could not be built"):
            y = module(x)
        torch.testing.assert_close(y, reference_dyrelu(module, x))
        assert list(tmp_path.iterdir()) == []
    finally:
        dyrelu_native.library.cache_clear()  # later tests load the real build again


def test_native_kernels_build_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("POSE_NATIVE_CACHE", str(tmp_path))
    dyrelu_native.library.cache_clear()
    try:
        assert dyrelu_native.library(torch.float32) is not None
        built = sorted(p.name for p in tmp_path.iterdir())
        # One library, no half-written file beside it; loading again builds nothing.
        assert len(built) == 1 and built[0].startswith("dyrelu_kernels_float_")
        dyrelu_native.library.cache_clear()
        stamp = (tmp_path / built[0]).stat().st_mtime_ns
        assert dyrelu_native.library(torch.float32) is not None
        assert (tmp_path / built[0]).stat().st_mtime_ns == stamp
    finally:
        dyrelu_native.library.cache_clear()


def test_native_kernels_build_without_the_vector_math_library(monkeypatch, tmp_path):
    # Where glibc's libmvec does not link, the kernels are built with scalar exp instead.
    monkeypatch.setenv("POSE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(dyrelu_native, "VECTOR_MATH", ("-DPOSE_VECTOR_MATH", "-lno-such-lib"))
    dyrelu_native.library.cache_clear()
    try:
        assert dyrelu_native.library(torch.float64) is not None
        torch.manual_seed(12)
        module = randomised(DyReLU(6, variant="c", reduction=2)).double()
        x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
        torch.testing.assert_close(module(x), reference_dyrelu(module, x))
    finally:
        dyrelu_native.library.cache_clear()
