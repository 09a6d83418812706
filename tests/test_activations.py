import copy
import logging
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from pose.activation_spec import DYRELU_DEFAULTS
from pose.models.activations import ACTIVATIONS, DyReLU, make_activation, pieces
from pose.models.dyrelu import compiled, native, ops, reference
from pose.models.dyrelu.settings import DyReLUSettings

FAST_BACKENDS = ["native", "compiled"]


@pytest.fixture(params=FAST_BACKENDS)
def backend(request):
    """Run a test through each fast backend that runs on the CPU: the native C++ kernels and
    the torch.compile'd passes (what CUDA and bfloat16 take)."""
    if request.param == "native":
        assert native.build_error() is None, "native kernels did not build"
    return request.param


def dyrelu(channels: int, backend: str = "auto", **options) -> DyReLU:
    return DyReLU(channels, backend=backend, **options)


def formula_dyrelu(module: DyReLU, x: torch.Tensor) -> torch.Tensor:
    """DY-ReLU straight from the paper's formulas, written independently of the package's
    reference: materialises (N, C, H, W, K)."""
    n, c, h, w = x.shape
    k = module.settings.k
    context = x.mean(dim=(2, 3))
    hidden = torch.relu(context @ module.fc1.weight.T + module.fc1.bias)
    theta = 2 * torch.sigmoid(hidden @ module.fc2.weight.T + module.fc2.bias) - 1
    groups = 1 if module.variant == "a" else c
    theta = theta.reshape(n, groups, 2, k).expand(n, c, 2, k)  # A: shared by every channel
    alpha = torch.tensor([1.0] + [0.0] * (k - 1), dtype=x.dtype)
    beta = torch.zeros(k, dtype=x.dtype)
    res_a = module.settings.lambda_a * theta[:, :, 0]  # (N, C, K)
    res_b = module.settings.lambda_b * theta[:, :, 1]
    a = (alpha + res_a)[:, :, None, None, :].expand(n, c, h, w, k)
    b = (beta + res_b)[:, :, None, None, :].expand(n, c, h, w, k)
    if module.variant == "c":
        z = torch.einsum("nchw,c->nhw", x, module.spatial_conv.weight[0, :, 0, 0])
        z = z + module.spatial_conv.bias
        soft = torch.softmax(z.reshape(n, h * w) / module.settings.tau, dim=1)
        soft = soft.reshape(n, 1, h, w, 1)
        pi = torch.clamp(module.settings.gamma * h * w * soft, max=1.0)
        if module.spatial == "coefficient":
            a, b = pi * a, pi * b
        else:
            a = alpha + pi * res_a[:, :, None, None, :]
            b = beta + pi * res_b[:, :, None, None, :]
    return (a * x[..., None] + b).max(dim=-1).values


def reference_dyrelu(module: DyReLU, x: torch.Tensor) -> torch.Tensor:
    """The package's reference (pose/models/dyrelu/reference.py) for this module."""
    return reference.dyrelu(x, *module._weights(), module.settings)


def randomised(module: DyReLU) -> DyReLU:
    # Large random hyper-function weights so the residuals are far from zero.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 1.0)
    return module


CASES = [("a", "coefficient"), ("b", "coefficient"), ("c", "coefficient"), ("c", "residual")]

# The shape of the fast backends' tests. Its sizes differ from one another and from the hyper
# function's widths (at reduction 2: hidden 5; 2K = 2, 4, 6 outputs for A, 2KC = 20, 40, 60 for
# B and C), so dynamo's duck sizing assumes no equality between them and the compiled
# backend's graph for a (variant, K, dtype) serves every test: it is compiled once per test
# process, not once per test. H*W = 63 also runs the native kernels' 16-wide partial sums and
# their scalar tails.
N, C, H, W = 3, 10, 7, 9


def canonical_input(dtype=torch.float64, requires_grad=False) -> torch.Tensor:
    return torch.randn(N, C, H, W, dtype=dtype, requires_grad=requires_grad)


@pytest.mark.parametrize("variant,spatial", CASES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_package_reference_matches_the_independent_formula(variant, spatial, k):
    torch.manual_seed(0)
    module = randomised(dyrelu(8, variant=variant, k=k, reduction=2, spatial=spatial)).double()
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(reference_dyrelu(module, x), formula_dyrelu(module, x),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("variant,spatial", CASES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_backend_agrees_with_the_reference(variant, spatial, k, backend):
    # Outputs and the gradients of x and of every parameter, against autograd through the
    # package's reference.
    torch.manual_seed(5)
    module = randomised(dyrelu(C, backend, variant=variant, k=k, reduction=2,
                               spatial=spatial)).double()
    x = canonical_input(requires_grad=True)
    grad = canonical_input()
    params = [x] + list(module.parameters())
    expected_y = reference_dyrelu(module, x)
    expected = torch.autograd.grad(expected_y, params, grad)
    y = module(x)
    actual = torch.autograd.grad(y, params, grad)
    assert module._backends == {(x.device, torch.float64, torch.float64): backend}
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
    for name, e, a in zip(["x"] + [n for n, _ in module.named_parameters()], expected, actual):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12,
                                   msg=lambda m: f"gradient of {name}: {m}")


def test_reference_backend_is_autograd_through_the_formula():
    torch.manual_seed(1)
    module = randomised(dyrelu(6, "reference", variant="c", reduction=2)).double()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    assert torch.equal(module(x), reference_dyrelu(module, x))


def test_dyrelu_a_coefficients_are_shared_across_channels():
    torch.manual_seed(2)
    module = randomised(dyrelu(4, variant="a", reduction=1))
    a, b = module.coefficients(torch.randn(2, 4))
    assert a.shape == (2, 1, 2) and b.shape == (2, 1, 2)


@pytest.mark.parametrize("variant,spatial", [("a", "coefficient"), ("b", "coefficient"),
                                             ("c", "residual")])
def test_dyrelu_with_relu_init_equals_relu_exactly(variant, spatial, backend):
    torch.manual_seed(3)
    module = dyrelu(C, backend, variant=variant, init="relu", spatial=spatial,
                    reduction=2).double()
    x = canonical_input()
    assert torch.equal(module(x), nn.ReLU()(x))


def test_dyrelu_c_with_relu_init_is_relu_scaled_by_uniform_attention(backend):
    module = dyrelu(C, backend, variant="c", init="relu", reduction=2).double()
    nn.init.zeros_(module.spatial_conv.weight)
    x = canonical_input()
    torch.testing.assert_close(module(x), torch.relu(x) / 3)  # pi = min(HW/3 * 1/HW, 1)


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("k", [2, 3])
def test_dyrelu_gradients_pass_gradcheck(variant, k, backend):
    torch.manual_seed(4)
    module = randomised(dyrelu(C, backend, variant=variant, k=k, reduction=2)).double()
    x = canonical_input(requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant,spatial", CASES)
def test_dyrelu_parameter_gradients_without_an_input_gradient_match_reference(variant, spatial,
                                                                             backend):
    # An input that needs no gradient: backward skips the input-gradient pass (and, for C,
    # still forms the 1x1 conv's weight gradient).
    torch.manual_seed(11)
    module = randomised(dyrelu(C, backend, variant=variant, reduction=2,
                               spatial=spatial)).double()
    x = canonical_input()
    grad = torch.randn_like(x)
    params = list(module.parameters())
    expected = torch.autograd.grad(reference_dyrelu(module, x), params, grad)
    for e, a in zip(expected, torch.autograd.grad(module(x), params, grad)):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("variant,spatial", CASES)
def test_dyrelu_saves_no_k_sized_tensor_for_backward(variant, spatial, backend):
    module = dyrelu(16, backend, variant=variant, k=3, reduction=2, spatial=spatial).double()
    x = torch.randn(4, 16, H, W, dtype=torch.float64, requires_grad=True)  # sizes distinct
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    big = [t for t in saved if t.numel() > x.numel() // 16]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # only x itself
    # Besides x, exactly the pooled context (N, C) and, for variant C, the softmax (N, H*W);
    # no parameter (the module holds those anyway).
    n, c, h, w = x.shape
    assert sum(t.numel() for t in saved) == x.numel() + n * c + (n * h * w if variant == "c" else 0)


def test_dyrelu_gradients_skip_frozen_parameters(backend):
    module = randomised(dyrelu(C, backend, variant="c", reduction=2)).double()
    module.fc1.requires_grad_(False)
    x = canonical_input(requires_grad=True)
    module(x).sum().backward()
    assert module.fc1.weight.grad is None and module.fc2.weight.grad is not None
    assert module.spatial_conv.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("variant", ["b", "c"])
def test_dyrelu_keeps_channels_last(variant, backend):
    module = dyrelu(C, backend, variant=variant, reduction=2).double()
    x = canonical_input().to(memory_format=torch.channels_last).requires_grad_()
    y = module(x)
    y.sum().backward()
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, reference_dyrelu(module, x.detach()))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_builds_and_gives_its_channels(name):
    module = make_activation(name, 8)
    x = torch.randn(2, 8 * pieces(name), 4, 4)  # Maxout takes K pieces per channel
    assert module(x).shape == (2, 8, 4, 4)


def test_activation_mapping_spec_passes_options():
    module = make_activation({"name": "dyrelu_c", "k": 3, "reduction": 2, "tau": 5.0}, 8)
    assert (module.settings.k, module.fc1.out_features, module.settings.tau) == (3, 4, 5.0)
    assert make_activation({"name": "prelu"}, 6).weight.numel() == 6
    assert make_activation("prelu_shared", 6).weight.numel() == 1


def test_spec_defaults_are_the_modules_defaults():
    import inspect

    parameters = inspect.signature(DyReLU.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty and name != "variant"}
    assert defaults == DYRELU_DEFAULTS  # the signature reads them from DyReLUOptions
    layer = DyReLU(8)
    assert (layer.settings.k, layer.settings.tau, layer.settings.gamma) == (
        DYRELU_DEFAULTS["k"], DYRELU_DEFAULTS["tau"], DYRELU_DEFAULTS["gamma"])


@pytest.mark.parametrize("spec,words", [
    ({"name": "dyrelu_b", "k": 2.5}, "option 'k' of activation 'dyrelu_b' must be an integer"),
    ({"name": "dyrelu_c", "spatial": "resid"}, "must be one of coefficient, residual"),
    ({"name": "dyrelu_a", "tau": "10"}, "option 'tau' of activation 'dyrelu_a' must be a number"),
    ({"name": "maxout", "projection": 1}, "must be true or false"),
    ({"name": "dyrelu_b", "backend": "cuda"}, "auto, native, compiled, reference"),
])
def test_option_types_are_checked_when_the_config_loads(spec, words):
    import json

    from pose.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="config key 'model.head.act': .*" + re.escape(words)):
        load_config(None, [f"model.head.act={json.dumps(spec)}"])
    # a right type with a value the layer refuses is the layer's to say
    load_config(None, ['model.head.act={"name": "dyrelu_b", "k": 0}'])


def test_unknown_activation_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown activation 'dyrelu_d'.*dyrelu_c"):
        make_activation("dyrelu_d", 8)


def test_unknown_activation_option_lists_valid_options():
    with pytest.raises(ValueError, match="unknown option.*'kk'|kk.*valid options: k, reduction"):
        make_activation({"name": "dyrelu_b", "kk": 3}, 8)
    with pytest.raises(ValueError, match="valid options: none"):
        make_activation({"name": "relu", "k": 3}, 8)
    with pytest.raises(ValueError, match="option 'backend' of activation 'dyrelu_b' must be one "
                                         "of auto, native, compiled, reference"):
        make_activation({"name": "dyrelu_b", "backend": "cuda"}, 8)
    with pytest.raises(ValueError, match="DyReLU backend must be one of"):
        DyReLU(8, backend="cuda")  # the layer used directly checks too


def test_settings_reach_the_kernels_as_floats_named_by_field():
    # The kernels read each value by the field name bound to its position (native.py); the
    # attention mode by its number in kernels.cpp's enum (plain 0, coefficient 1, residual 2).
    settings = DyReLUSettings(k=3, channelwise=False, spatial="residual", lambda_a=0.7,
                              lambda_b=0.2, tau=4.0, gamma=0.25)
    assert dict(zip(DyReLUSettings.field_names(), settings.as_floats())) == {
        "k": 3.0, "channelwise": 0.0, "spatial": 2.0, "lambda_a": 0.7, "lambda_b": 0.2,
        "tau": 4.0, "gamma": 0.25}


def test_native_kernels_name_a_missing_setting():
    assert native.build_error() is None
    module = dyrelu(4, "native", reduction=2)
    x, weights = torch.randn(1, 4, 2, 2), module._weights()
    names = DyReLUSettings.field_names()
    try:
        native.bind_fields([n for n in names if n != "tau"])  # settings.py without 'tau'
        with pytest.raises(RuntimeError, match="the settings have no 'tau'"):
            torch.ops.dyrelu_pose_native.forward(x, *weights, module.settings.as_floats())
        native.bind_fields(names)
        with pytest.raises(RuntimeError, match="hold 3 values, 'lambda_a' is field 3"):
            torch.ops.dyrelu_pose_native.forward(x, *weights, module.settings.as_floats()[:3])
    finally:
        native.bind_fields(names)
    torch.ops.dyrelu_pose_native.forward(x, *weights, module.settings.as_floats())


@pytest.mark.compiled_backend
@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_dyrelu_runs_under_bf16_autocast_close_to_float32(variant):
    torch.manual_seed(6)
    module = randomised(dyrelu(C, variant=variant, reduction=2))
    x = canonical_input(torch.float32, requires_grad=True)
    reference_y = module(x)
    reference_y.sum().backward()
    reference_grad, x.grad = x.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x.to(torch.bfloat16))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert module._backends[(x.device, torch.bfloat16, torch.float32)] == "compiled"
    torch.testing.assert_close(y.float(), reference_y, atol=0.1, rtol=0.05)
    # Near a kink, bf16 rounding can pick the other piece: the slope there jumps. Elsewhere
    # the input gradient matches float32.
    flipped = ~torch.isclose(x.grad, reference_grad, atol=0.1, rtol=0.05)
    assert flipped.float().mean() < 0.01
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def _compiled_graph_counts():
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    functions = [compiled._forward, compiled._backward, *compiled._PLAIN_PASSES]
    return [len(_debug_get_cache_entry_list(f.__code__)) for f in functions]


@pytest.mark.compiled_backend
@pytest.mark.parametrize("variant", ["b", "c"])
def test_compiled_backend_compiles_once_for_every_channel_count(variant):
    # Per-layer recompiles would hit dynamo's recompile limit in a real model (MobileNetV2
    # has a dozen channel counts) and fall back to slow eager kernels.
    def run(channels):
        module = dyrelu(channels, "compiled", variant=variant, reduction=2).double()
        x = torch.randn(2, channels, 6, 5, dtype=torch.float64, requires_grad=True)
        module(x).sum().backward()
        with torch.no_grad():
            module(x)

    run(8)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for channels in (12, 16, 40):
            run(channels)


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("variant", ["b", "c"])  # without and with the softmax kept
def test_whole_model_compile_keeps_the_layer_whole_with_the_same_gradients(backend, variant):
    # Inside torch.compile the layer is one autograd function (what it saves for backward
    # unchanged): around the native kernels' operators, kept whole, or around the compiled
    # backend's passes, traced into the model's graph. No graph break, and the compiled model
    # must learn what the eager one learns.
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C),
                          randomised(dyrelu(C, backend, variant=variant, reduction=2)),
                          nn.Conv2d(C, 4, 1)).double()
    x = torch.randn(N, 3, H, W, dtype=torch.float64)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.compile(model)(x).square().sum().backward()  # inductor, as users compile a model
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, atol=1e-10, rtol=1e-10)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    code = explained.graphs[0].print_readable(print_output=False)  # with the subgraphs
    assert "autograd_function_apply" in code
    if backend == "native":
        assert "torch.ops.dyrelu_pose_native.forward" in code
        assert "torch.ops.dyrelu_pose_native.backward" in code


class _EveryVariant(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.acts = nn.ModuleList(dyrelu(C, "compiled", variant=v, reduction=2, spatial=s)
                                  for v, s in CASES)
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 1) for _ in CASES)

    def forward(self, x):
        x = self.stem(x)
        for act, conv in zip(self.acts, self.convs):
            x = conv(act(x))
        return x


@pytest.mark.compiled_backend
@pytest.mark.slow(seconds=80)
def test_compiled_backend_shares_graphs_across_training_inference_eager_and_compiled():
    # A compiled function keeps one graph per state it is called in; past its recompile limit
    # it would run eagerly for good. Inference after training, and a compiled model after an
    # eager one, must not add graphs (compiled.py calls them without grad, on detached
    # tensors).
    torch.manual_seed(8)
    model = _EveryVariant().double()
    inputs = [torch.randn(N, 3, H, W, dtype=torch.float64),  # H*W = 63 and 5120
              torch.randn(N, 3, 80, 64, dtype=torch.float64)]
    for x in inputs:
        model(x).sum().backward()
    trained = _compiled_graph_counts()
    with torch.no_grad():
        for x in inputs:
            model(x)
    assert _compiled_graph_counts() == trained
    # A compiled model traces the passes into its own graphs (the whole-model test above runs
    # inductor; the model's compiler does not matter here).
    compiled_model = torch.compile(model, backend="aot_eager")
    for x in inputs:
        compiled_model(x).sum().backward()
        with torch.no_grad():
            compiled_model(x)
    assert _compiled_graph_counts() == trained


@pytest.mark.parametrize("variant,spatial", CASES)
@pytest.mark.parametrize("k", [2, 4])  # K = 2 runs the loops specialised for it; 4 the general
def test_native_backend_agrees_with_the_reference_in_float32(variant, spatial, k):
    # H*W = 63: the kernels' 16-wide partial sums and their scalar tails both run. The sizes
    # are above those at which the kernels share a layer's samples, and (for B and C) the
    # parameter gradients' rows, between threads.
    assert native.build_error() is None, "native kernels did not build"
    torch.manual_seed(9)
    module = randomised(dyrelu(24, "native", variant=variant, k=k, reduction=1.5,
                               spatial=spatial))
    x = torch.randn(24, 24, 7, 9, requires_grad=True)
    grad = torch.randn_like(x)
    params = [x, *module.parameters()]
    expected_y = reference_dyrelu(module, x)
    expected = (expected_y, *torch.autograd.grad(expected_y, params, grad))
    y = module(x)
    for actual, wanted in zip((y, *torch.autograd.grad(y, params, grad)), expected):
        torch.testing.assert_close(actual, wanted, atol=1e-4, rtol=1e-4)


def test_auto_backend_is_resolved_once_per_device_and_dtype_and_logged(caplog):
    ops.resolve.cache_clear()
    module = dyrelu(6, reduction=2)
    with caplog.at_level(logging.INFO, logger="pose.dyrelu"):
        module(torch.randn(2, 6, 3, 3))
        module(torch.randn(2, 6, 3, 3))
        module.double()(torch.randn(2, 6, 3, 3, dtype=torch.float64))
    assert module._backends == {
        (torch.device("cpu"), torch.float32, torch.float32): "native",
        (torch.device("cpu"), torch.float64, torch.float64): "native"}
    lines = [r.getMessage() for r in caplog.records if r.name == "pose.dyrelu"]
    assert lines == ["DY-ReLU on cpu/float32: native backend (C++ kernels built)",
                     "DY-ReLU on cpu/float64: native backend (C++ kernels built)"]


@pytest.mark.compiled_backend
def test_a_native_build_failure_warns_once_and_uses_the_compiled_backend(monkeypatch):
    ops.resolve.cache_clear()
    monkeypatch.setattr(native, "build_error", lambda: "RuntimeError: no compiler")
    try:
        torch.manual_seed(10)
        module = randomised(dyrelu(6, variant="b", reduction=2)).double()
        other = randomised(dyrelu(6, variant="b", reduction=2)).double()
        x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = module(x)
            other(x)
        messages = [str(w.message) for w in caught]
        assert messages == ["the native DY-ReLU kernels could not be built (RuntimeError: no "
                            "compiler); cpu/float64 uses the compiled backend instead"]
        assert module._backends[(x.device, torch.float64, torch.float64)] == "compiled"
        torch.testing.assert_close(y, reference_dyrelu(module, x))
    finally:
        ops.resolve.cache_clear()


def test_a_compile_failure_warns_and_uses_the_reference_backend(monkeypatch):
    ops.resolve.cache_clear()

    def broken(*args):
        raise RuntimeError("no working C++ compiler\nmore detail")

    monkeypatch.setattr(compiled, "_compiled_forward", broken)
    try:
        module = randomised(dyrelu(6, "compiled", variant="c", reduction=2))
        x = torch.randn(2, 6, 4, 3)
        with pytest.warns(UserWarning, match=r"torch.compile of the DY-ReLU layer failed on "
                          r"cpu/float32 \(RuntimeError: no working C\+\+ compiler\); it uses "
                          r"the reference backend"):
            y = module(x)
        assert module._backends[(x.device, torch.float32, torch.float32)] == "reference"
        torch.testing.assert_close(y, reference_dyrelu(module, x))
    finally:
        ops.resolve.cache_clear()


def test_a_layer_that_has_run_pickles_and_copies(backend):
    module = randomised(dyrelu(6, backend, variant="c", reduction=2)).double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    expected = module(x)
    for twin in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        torch.testing.assert_close(twin(x), expected)
        assert twin._backends == module._backends


def test_errors_at_run_time_propagate_and_change_no_backend(backend):
    module = dyrelu(6, backend, reduction=2).double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    module(x)
    with pytest.raises(RuntimeError):
        module(x[:, :5])  # wrong channel count
    assert module._backends == {(torch.device("cpu"), torch.float64, torch.float64): backend}
    module(x)


def test_the_native_kernels_build_through_cpp_extension_into_its_cache():
    assert native.build_error() is None
    from torch.utils.cpp_extension import _get_build_directory

    name = native._loaded[-1]
    assert (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").is_file()


# Run in a new process: the kernels' operator namespace can be registered once per process,
# and this test's worker has usually loaded them already.
_SCALAR_EXP_BUILD = """
import torch
from pose.models.activations import DyReLU
from pose.models.dyrelu import native, reference

real_load = native._load
def load(vector_math):
    if vector_math:  # as where glibc's libmvec does not link
        raise RuntimeError("cannot find -lmvec")
    real_load(vector_math)
native._load = load
assert native.build_error() is None
torch.manual_seed(12)
for variant in "bc":
    module = DyReLU(6, variant=variant, reduction=2, backend="native").double()
    for p in module.parameters():
        torch.nn.init.normal_(p, 0.0, 1.0)
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64, requires_grad=True)
    y = module(x)
    expected = reference.dyrelu(x, *module._weights(), module.settings)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(y.square().sum(), [x, *module.parameters()])
    wanted = torch.autograd.grad(expected.square().sum(), [x, *module.parameters()])
    for a, b in zip(grads, wanted):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
print(native._loaded[-1])
"""


@pytest.mark.slow(seconds=40)
def test_native_kernels_build_with_scalar_exp_where_the_vector_math_library_fails(tmp_path):
    # Where glibc's libmvec does not link (musl, an old glibc), the kernels are built again
    # without it, with scalar exp in the softmax and sigmoid loops, and agree with the reference.
    assert native.build_error() is None, "native kernels did not build"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", _SCALAR_EXP_BUILD], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    name = result.stdout.split()[-1]
    assert name != native._loaded[-1]  # another build: other flags, another name
    assert (tmp_path / name / f"{name}.so").is_file()
