"""The fast DY-ReLU layer: one autograd function over a backend's forward and backward, and
the choice of backend.

A layer runs on one of three routes, chosen once per device and dtype (``route``):

- ``native`` (native.py, kernels.cpp): C++ kernels for float32/float64 on the CPU that make
  every pass over one sample while it is in cache, registered as the operators
  ``dyrelu_pose_native::forward`` and ``backward``;
- ``compiled`` (compiled.py): fused passes compiled by ``torch.compile``, for every device
  and dtype, bfloat16 under autocast and CUDA included;
- ``reference`` (reference.py): autograd through the formula.

The two fast backends keep one contract:

    forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight?, spatial_bias?,
            settings) -> y (laid out as x), context (N, C), softmax (N, H*W) or empty (0)
    backward(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight?, context,
             softmax, settings, input_grad) -> gradients of x (laid out as x; empty unless
             input_grad), fc1 (weight, bias), fc2 (weight, bias), the 1x1 conv (weight, bias;
             shaped as they are) or empty

(``settings``: the DyReLUSettings record for the compiled backend, its ``as_floats()`` for
the native operators). Over either, one autograd function keeps for backward only x, the
pooled context and, for variant C, the softmax: about what ReLU keeps, where autograd through
the reference keeps an (N, C, H, W, K) tensor. Whole-model ``torch.compile`` traces that
function: it keeps the native operators whole (through the fake kernels below) and traces
the compiled backend's passes into the model's own graphs. Exporters and operator counters
see the reference instead (``DyReLU.forward``).

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
from typing import Callable

import torch

from pose.activation_spec import DYRELU_BACKENDS
from pose.models.dyrelu import compiled, native, reference
from pose.models.dyrelu.settings import DyReLUSettings

Tensor = torch.Tensor
BACKENDS = DYRELU_BACKENDS
logger = logging.getLogger("pose.dyrelu")


def _fake_forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
                  settings):
    n, c, h, w = x.shape
    softmax_shape = (n, h * w) if spatial_weight is not None else (0,)
    return (torch.empty_like(x), x.new_empty((n, c), dtype=fc1_weight.dtype),
            x.new_empty(softmax_shape, dtype=fc1_weight.dtype))


def _fake_backward(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, context,
                   softmax, settings, input_grad):
    spatial = (x.new_empty(0), x.new_empty(0)) if spatial_weight is None else (
        torch.empty_like(spatial_weight), fc1_weight.new_empty(1))
    return [torch.empty_like(x) if input_grad else x.new_empty(0),
            torch.empty_like(fc1_weight), torch.empty_like(fc1_bias),
            torch.empty_like(fc2_weight), torch.empty_like(fc2_bias), *spatial]


def _autograd_function(forward_op: Callable, backward_op: Callable
                       ) -> type[torch.autograd.Function]:
    """The layer's autograd function over one backend's forward and backward. The
    parameters, which the module holds anyway, are kept as plain references, so that what
    autograd saves is activation memory alone."""

    class LayerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
                    spatial_bias, settings):
            y, context, softmax = forward_op(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                             spatial_weight, spatial_bias, settings)
            ctx.mark_non_differentiable(context, softmax)
            ctx.save_for_backward(x, context, softmax)
            ctx.weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight)
            ctx.settings = settings
            return y, context, softmax

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_y, _grad_context, _grad_softmax):
            x, context, softmax = ctx.saved_tensors
            needs = ctx.needs_input_grad
            grads = backward_op(grad_y, x, *ctx.weights, context, softmax, ctx.settings,
                                needs[0])
            # Gradients of x, fc1, fc2 and the 1x1 conv (inputs 0-6); none for the settings.
            return (*(g if need else None for g, need in zip(grads, needs)), None)

    return LayerFunction


@functools.lru_cache(maxsize=None)
def _fast_layer(backend: str) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    """The autograd function's ``apply`` for a fast backend. The native kernels are C++
    operators, which a compiled model keeps whole through the fake kernels registered here;
    the compiled backend's functions are torch code, which a compiled model traces."""
    if backend == "native":
        torch.library.register_fake("dyrelu_pose_native::forward")(_fake_forward)
        torch.library.register_fake("dyrelu_pose_native::backward")(_fake_backward)
        return _autograd_function(torch.ops.dyrelu_pose_native.forward,
                                  torch.ops.dyrelu_pose_native.backward).apply
    return _autograd_function(compiled.forward, compiled.backward).apply


def route(backend: str, settings: DyReLUSettings) -> Callable[..., Tensor]:
    """``run(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias)
    -> y``: a layer with these settings on a resolved backend (native, compiled or
    reference). The native kernels must have been built (``native.build_error()`` is None)."""
    if backend == "reference":
        return functools.partial(reference.dyrelu, settings=settings)
    apply = _fast_layer(backend)
    kernel_settings = settings.as_floats() if backend == "native" else settings

    def run(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias):
        return apply(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
                     spatial_bias, kernel_settings)[0]

    return run


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
