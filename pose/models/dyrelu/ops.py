"""The fast DY-ReLU layer as one registered operator, and the choice of its backend.

``torch.ops.pose.dyrelu_layer`` computes ``reference.dyrelu`` with a hand-written backward
(``pose::dyrelu_layer_backward``), so that a layer keeps for backward only x, the pooled
context (N, C) and, for variant C, the attention's softmax (N, H*W): about what ReLU keeps,
where autograd through the reference keeps an (N, C, H, W, K) tensor. Eager mode, autograd
and whole-model ``torch.compile`` all see this one operator; exporters (torch.export, ONNX,
jit.trace) and operator counters see the reference instead (``DyReLU.forward``).

Backends, each a ``forward`` and ``backward`` with one contract:

    forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
            settings) -> y (x's shape and dtype), context (N, C), softmax (N, H*W) or empty
    backward(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, context,
             softmax, settings, input_grad) -> gradients of x (empty unless input_grad),
             fc1 (weight, bias), fc2 (weight, bias), the 1x1 conv (weight, bias) or empty

- ``native`` (native.py, kernels.cpp): C++ kernels for float32/float64 on the CPU that make
  every pass over one sample while it is in the core's cache;
- ``compiled`` (compiled.py): fused passes compiled by ``torch.compile``, for every device
  and dtype, bfloat16 under autocast and CUDA included;
- ``reference`` (reference.py): autograd through the formula; no operator.

``auto`` is resolved once per process for each (device, input dtype, parameter dtype): native
where it applies and builds, else compiled where torch.compile works there, else reference.
One log line (logger ``pose.dyrelu``) names the backend and why; a backend that cannot be had
(a failed build or compile) gives one warning naming the cause and the backend used instead.
Nothing is decided again inside forward or backward, and errors at run time propagate.
"""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Optional

import torch

from pose.activation_spec import DYRELU_BACKENDS
from pose.models.dyrelu import compiled, native
from pose.models.dyrelu.settings import DyReLUSettings

Tensor = torch.Tensor
BACKENDS = DYRELU_BACKENDS
logger = logging.getLogger("pose.dyrelu")


@functools.lru_cache(maxsize=None)
def _record(settings: tuple[float, ...]) -> DyReLUSettings:
    return DyReLUSettings.from_floats(list(settings))


_IMPLEMENTATIONS = {"native": native, "compiled": compiled}


def _forward(backend: str, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
             spatial_bias, settings: list[float]):
    return _IMPLEMENTATIONS[backend].forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                             spatial_weight, spatial_bias,
                                             _record(tuple(settings)))


def _backward(backend: str, grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
              spatial_weight, context, softmax, settings: list[float], input_grad: bool):
    return _IMPLEMENTATIONS[backend].backward(grad, x, fc1_weight, fc1_bias, fc2_weight,
                                              fc2_bias, spatial_weight, context, softmax,
                                              _record(tuple(settings)), input_grad)


def _like(x: Tensor, result: Tensor) -> Tensor:
    """``result`` in x's memory layout (the layout the fake kernel promises)."""
    if result.stride() == x.stride():
        return result
    out = torch.empty_like(x, dtype=result.dtype)
    return result if out.stride() == result.stride() else out.copy_(result)


def _tensor_or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


# The operators. Defined with torch.library.Library rather than torch.library.custom_op: its
# generic autograd wrapper cost about 70 us a call more than the Autograd kernel below, which
# counts in a layer's fixed cost (benchmarks/bench_activation.py).
_lib = torch.library.Library("pose", "FRAGMENT")
_lib.define("dyrelu_layer(Tensor x, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
            "Tensor fc2_bias, Tensor? spatial_weight, Tensor? spatial_bias, float[] settings, "
            "str backend) -> (Tensor, Tensor, Tensor)")
_lib.define("dyrelu_layer_backward(Tensor grad, Tensor x, Tensor fc1_weight, Tensor fc1_bias, "
            "Tensor fc2_weight, Tensor fc2_bias, Tensor? spatial_weight, Tensor context, "
            "Tensor softmax, float[] settings, str backend, bool input_grad) -> Tensor[]")


def _layer(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
           settings, backend):
    """y, and what backward needs: the pooled context and the softmax (empty without C)."""
    y, context, softmax = _forward(backend, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                   spatial_weight, spatial_bias, settings)
    return _like(x, y), context, _tensor_or_empty(softmax, context)


def _layer_fake(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
                settings, backend):
    n, c, h, w = x.shape
    softmax_shape = (n, h * w) if spatial_weight is not None else (0,)
    return (torch.empty_like(x), x.new_empty((n, c), dtype=fc1_weight.dtype),
            x.new_empty(softmax_shape, dtype=fc1_weight.dtype))


def _layer_backward(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
                    context, softmax, settings, backend, input_grad):
    """Gradients of x (empty unless input_grad), fc1, fc2 and the 1x1 conv (empty without)."""
    grads = _backward(backend, grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                      spatial_weight, context, softmax if softmax.numel() else None, settings,
                      input_grad)
    grad_x, *grad_fc, grad_sw, grad_sb = grads
    grad_x = _like(x, grad_x) if input_grad else x.new_empty(0)
    spatial = (x.new_empty(0), x.new_empty(0)) if spatial_weight is None else (
        grad_sw.view(spatial_weight.shape), grad_sb.view(1))
    return [grad_x, *grad_fc, *spatial]


def _layer_backward_fake(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
                         context, softmax, settings, backend, input_grad):
    spatial = (x.new_empty(0), x.new_empty(0)) if spatial_weight is None else (
        torch.empty_like(spatial_weight), fc1_weight.new_empty(1))
    return [torch.empty_like(x) if input_grad else x.new_empty(0),
            torch.empty_like(fc1_weight), torch.empty_like(fc1_bias),
            torch.empty_like(fc2_weight), torch.empty_like(fc2_bias), *spatial]


def _plain(t: Tensor) -> bool:
    """A real tensor, not one being traced (by AOTAutograd, under torch.compile): eager calls
    run the implementation directly, saving a second trip through the dispatcher; traced
    calls go through the operator, which the graph keeps whole."""
    return type(t) is Tensor


class _LayerFunction(torch.autograd.Function):
    """The forward operator's autograd: calls it below autograd and saves x, the context and
    the softmax; the parameters, which the module holds anyway, are kept as plain references,
    so that what autograd saves is activation memory alone."""

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
                spatial_bias, settings, backend):
        inputs = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
                  settings, backend)
        if _plain(x):
            y, context, softmax = _layer(*inputs)
        else:
            with torch._C._AutoDispatchBelowAutograd():
                y, context, softmax = torch.ops.pose.dyrelu_layer(*inputs)
        ctx.mark_non_differentiable(context, softmax)
        ctx.save_for_backward(x, context, softmax)
        ctx.weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight)
        ctx.settings, ctx.backend = settings, backend
        return y, context, softmax

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_context, _grad_softmax):
        x, context, softmax = ctx.saved_tensors
        needs = ctx.needs_input_grad
        inputs = (grad_y, x, *ctx.weights, context, softmax, ctx.settings, ctx.backend,
                  needs[0])
        grads = (_layer_backward if _plain(grad_y) else
                 torch.ops.pose.dyrelu_layer_backward)(*inputs)
        # Gradients of x, fc1, fc2 and the 1x1 conv (inputs 0-6); none for the rest.
        return (*(g if need else None for g, need in zip(grads, needs)), None, None)


_lib.impl("dyrelu_layer", _layer, "CompositeExplicitAutograd")
_lib.impl("dyrelu_layer", _LayerFunction.apply, "Autograd")
_lib.impl("dyrelu_layer_backward", _layer_backward, "CompositeExplicitAutograd")
torch.library.register_fake("pose::dyrelu_layer")(_layer_fake)
torch.library.register_fake("pose::dyrelu_layer_backward")(_layer_backward_fake)
dyrelu_layer = torch.ops.pose.dyrelu_layer


def layer(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
          settings, backend):
    """``dyrelu_layer``, with eager calls spared the dispatcher's trip to the Python kernels
    registered above (about 15 us a call, which counts at small shapes): what the operator
    runs, called directly. Under torch.compile, the operator itself."""
    inputs = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
              settings, backend)
    if torch.compiler.is_compiling() or not _plain(x):
        return dyrelu_layer(*inputs)
    if torch.is_grad_enabled():
        return _LayerFunction.apply(*inputs)
    return _layer(*inputs)


# Choosing the backend.

def _probe_compiled(device: torch.device, dtype: torch.dtype, weight_dtype: torch.dtype):
    """Runs the compiled forward and backward once on a small layer: torch.compile fails at
    its first call where it cannot work (no C++ compiler or Triton, an unsupported dtype)."""
    settings = DyReLUSettings()  # variant B, K = 2
    # Sizes that all differ (batch 2, channels 4, hidden width 3, 2KC = 16, 5x7), so that
    # dynamo's duck sizing assumes no equality and the graph also serves real B layers.
    x = torch.randn(2, 4, 5, 7, device=device, dtype=dtype)
    weights = [torch.randn(*shape, device=device, dtype=weight_dtype)
               for shape in ((3, 4), (3,), (16, 3), (16,))]
    y, context, softmax = compiled.forward(x, *weights, None, None, settings)
    compiled.backward(torch.ones_like(y), x, *weights, None, context, softmax, settings, True)


@functools.lru_cache(maxsize=None)
def resolve(requested: str, device: torch.device, dtype: torch.dtype,
            weight_dtype: torch.dtype) -> str:
    """The backend that runs ``requested`` for inputs of ``dtype`` on ``device`` with
    parameters of ``weight_dtype``: decided once per process, logged once, warned once."""
    if requested not in BACKENDS:
        raise ValueError(f"DyReLU backend must be one of {BACKENDS}, got {requested!r}")
    where = f"{device.type}/{str(dtype).replace('torch.', '')}"
    native_fits = native.supports(torch.empty(0, device=device, dtype=dtype), weight_dtype)
    backend, why = requested, "asked for"
    if requested == "native" and not native_fits:
        warnings.warn(f"DY-ReLU backend 'native' serves float32/float64 on the CPU only; "
                      f"{where} uses the best available instead")
        requested = "auto"
    if requested in ("auto", "native") and native_fits:
        error = native.build_error()
        if error is None:
            backend, why = "native", "C++ kernels built"
        else:
            warnings.warn(f"the native DY-ReLU kernels could not be built ({error}); "
                          f"{where} uses the compiled backend instead")
            requested = "compiled"
    elif requested == "auto":
        requested, why = "compiled", "the native kernels serve float32/float64 on the CPU only"
    if requested == "compiled":
        try:
            _probe_compiled(device, dtype, weight_dtype)
            backend = "compiled"
        except Exception as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            cause = f"{type(error).__name__}: {lines[0] if lines else ''}"
            warnings.warn(f"torch.compile of the DY-ReLU layer failed on {where} ({cause}); "
                          f"it uses the reference backend instead (slower, more memory)")
            backend, why = "reference", f"torch.compile failed: {cause}"
    logger.info("DY-ReLU on %s: %s backend (%s)", where, backend, why)
    return backend
