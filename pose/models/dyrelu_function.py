"""Memory-lean, fused DY-ReLU: the passes over the (N, C, H, W) input of one layer.

For x of shape (N, C, H, W), coefficients a, b of shape (N, G, K) (G = C channel-wise, G = 1
shared) and, for variant C, a spatial attention pi of shape (N, 1, H, W), a layer computes

    mode "plain":       y = max_k ( a_k x + b_k )
    mode "coefficient": y = pi * max_k ( a_k x + b_k )                 (the paper's variant C)
    mode "residual":    y = max_k ( (alpha_k + pi a_k) x + beta_k + pi b_k )

where in the first two modes a, b already include the static alpha, beta, and in "residual"
they are only the residuals. The coefficients come from the hyper function (pooling,
FC-ReLU-FC-sigmoid) and pi from a softmax over the 1x1 spatial conv's output, both written
out here with their backward (pose.models.activations.DyReLU holds the parameters).

Memory: a naive version stacks K affine maps into an (N, C, H, W, K) tensor and autograd keeps
it. Here backward keeps only x and small tensors (the pooled context and, for variant C, the
attention's softmax over H*W) and recomputes the hyper function and which piece won.

Compiled models: the layer is two custom operators, pose::dyrelu and pose::dyrelu_backward,
which ``torch.compile`` keeps whole; exporters (ONNX, torch.export, jit.trace) get it as plain
operators instead.

Speed: ReLU makes about five passes over memory per forward+backward. A layer here makes the
fewest this algorithm allows: forward reads x for the pooled context (and for variant C the
attention logits), then reads x and writes y; backward reads x and the output gradient once
for the coefficient gradients (and once for the attention gradient), then once to write the
input gradient, into which the gradients through the pooling and the 1x1 spatial conv are
folded, so autograd never adds a broadcast gradient pass. The layer's forward and its
backward are each one function compiled whole with ``torch.compile`` (inductor): the passes
become a few loops and the hyper function's small operations are fused around them (mode
"residual" keeps its backward passes compiled one by one: see _separately_compiled_passes).
Compiled as six separate kernels with the hyper function in eager mode, a layer took
0.1-0.5 ms more: two dozen small calls, each paying Python and dispatch, slower still when
the passes have just flushed the caches. Dynamic shapes, so that one compilation serves every
layer: kernels compiled per shape ran 10-25% faster on their own, but a whole train step at
256x192 did not get faster, and each new shape cost seconds of compilation.
``POSE_DYRELU_COMPILE=0`` runs the functions eagerly; if compilation fails they run eagerly
with a warning.

On the CPU, float32 and float64 layers in the default memory layout take a native path
instead (pose/models/dyrelu_native.py, C kernels built on first use): every pass over one
sample runs while that sample is in the core's cache, so only the first pass over x reads
memory, and each of forward and backward is one call. A layer took 0.35-0.74x the compiled
path's time (README, Performance). CUDA, bfloat16 and channels_last keep the compiled
path.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from pose.models import dyrelu_native

Tensor = torch.Tensor
MODES = ("plain", "coefficient", "residual")


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _piece(coeff: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """Piece k of (N, G, K) coefficients as (N, G, 1, 1), broadcastable against x."""
    return coeff[:, :, k].to(dtype)[:, :, None, None]


def _pieces(x: Tensor, a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor,
            pi: Optional[Tensor], mode: str) -> list[tuple[Tensor, Tensor]]:
    """(slope, intercept) of each piece, broadcastable against x."""
    pieces = []
    for k in range(a.shape[-1]):
        slope, intercept = _piece(a, k, x.dtype), _piece(b, k, x.dtype)
        if mode == "residual":
            p = pi.to(x.dtype)
            slope = alpha[k].to(x.dtype) + p * slope  # (N, G, H, W)
            intercept = beta[k].to(x.dtype) + p * intercept
        pieces.append((slope, intercept))
    return pieces


def _winner_masks(x: Tensor, pieces: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """A 0/1 mask (x's dtype) per piece marking where it is the maximum. Ties go to the later
    piece, so with ReLU's coefficients the gradient at x = 0 is 0, as for ``torch.relu``."""
    if len(pieces) == 1:
        return [torch.ones_like(x)]
    best = pieces[0][0] * x + pieces[0][1]
    winner = torch.zeros_like(x)
    for k in range(1, len(pieces)):
        value = pieces[k][0] * x + pieces[k][1]
        # Arithmetic masks: torch.where on broadcast operands is slow in eager mode.
        wins = (value >= best).to(x.dtype)
        winner = winner + (k - winner) * wins
        best = torch.maximum(best, value)
    if len(pieces) == 2:
        return [1 - winner, winner]
    return [(winner == k).to(x.dtype) for k in range(len(pieces))]


def _winning_slope(x: Tensor, pieces: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The slope of the piece that wins at each element, ties to the later piece as in
    _winner_masks. Piece k beats the best so far where (a_k - a_best) x >= b_best - b_k: the
    same test as a_k x + b_k >= a_best x + b_best up to rounding, but not the same operations.
    Written as the same operations, the backward graph's common-subexpression pass would merge
    it with the coefficient gradients' masks, and inductor would store that mask (one more
    full-size write) instead of recomputing it from x in the input-gradient loop."""
    best_slope, best_intercept = pieces[0]
    for slope, intercept in pieces[1:]:
        wins = (slope - best_slope) * x >= best_intercept - intercept
        best_slope = torch.where(wins, slope, best_slope)
        best_intercept = torch.where(wins, intercept, best_intercept)
    return best_slope if len(pieces) > 1 else best_slope.expand_as(x)


def context_kernel(x: Tensor, spatial_weight: Optional[Tensor]):
    """The hyper function's pooled input (N, C) and, for variant C, the attention logits
    without bias (N, 1, H, W): the 1x1 conv C -> 1."""
    acc = _accumulate_dtype(x.dtype)
    context = x.mean(dim=(2, 3), dtype=acc)
    if spatial_weight is None:
        return context, None
    logits = (x.to(acc) * spatial_weight.to(acc).view(1, -1, 1, 1)).sum(1, keepdim=True)
    return context, logits


def forward_kernel(x: Tensor, a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor,
                   pi: Optional[Tensor], mode: str) -> Tensor:
    pieces = _pieces(x, a, b, alpha, beta, pi, mode)
    y = pieces[0][0] * x + pieces[0][1]
    for slope, intercept in pieces[1:]:
        y = torch.maximum(y, slope * x + intercept)
    return y * pi.to(x.dtype) if mode == "coefficient" else y


def coeff_grad_kernel(x: Tensor, a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor,
                      pi: Optional[Tensor], mode: str, grad: Tensor):
    """dL/da, dL/db of shape (N, G, K): sums over H, W (and C when G = 1) of the output gradient
    where each piece wins, times x for the slopes. In both pi modes the chain rule brings one
    factor pi (as the output scale, or inside the piece)."""
    acc = _accumulate_dtype(x.dtype)
    dims = (1, 2, 3) if a.shape[1] == 1 else (2, 3)
    masks = _winner_masks(x, _pieces(x, a, b, alpha, beta, pi, mode))
    g = grad.to(acc) if pi is None else grad.to(acc) * pi.to(acc)
    gx = g * x.to(acc)
    total_a, total_b = gx.sum(dims), g.sum(dims)
    grads_a = [(gx * masks[k].to(acc)).sum(dims) for k in range(1, len(masks))]
    grads_b = [(g * masks[k].to(acc)).sum(dims) for k in range(1, len(masks))]
    # Piece 0 takes what the others did not.
    grads_a.insert(0, total_a - sum(grads_a) if grads_a else total_a)
    grads_b.insert(0, total_b - sum(grads_b) if grads_b else total_b)
    shape = (x.shape[0], a.shape[1], a.shape[2])
    return torch.stack(grads_a, -1).reshape(shape), torch.stack(grads_b, -1).reshape(shape)


def attention_grad_kernel(x: Tensor, a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor,
                          pi: Tensor, mode: str, grad: Tensor) -> Tensor:
    """dL/dpi of shape (N, 1, H, W): the sum over C of the output gradient times the winning
    piece (mode "coefficient") or its residual part a_k x + b_k (mode "residual")."""
    acc = _accumulate_dtype(x.dtype)
    if mode == "coefficient":
        y = forward_kernel(x, a, b, alpha, beta, None, "plain")
        return (grad.to(acc) * y.to(acc)).sum(1, keepdim=True)
    masks = _winner_masks(x, _pieces(x, a, b, alpha, beta, pi, mode))
    residual = 0
    for k, mask in enumerate(masks):
        residual = residual + mask * (_piece(a, k, x.dtype) * x + _piece(b, k, x.dtype))
    return (grad.to(acc) * residual.to(acc)).sum(1, keepdim=True)


def input_grad_kernel(x: Tensor, a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor,
                      pi: Optional[Tensor], mode: str, grad: Tensor,
                      grad_context: Optional[Tensor], grad_logits: Optional[Tensor],
                      spatial_weight: Optional[Tensor]) -> Tensor:
    """dL/dx: the output gradient times the winning slope, plus the gradients that reach x
    through the mean pooling (grad_context / HW) and the 1x1 spatial conv."""
    slope = _winning_slope(x, _pieces(x, a, b, alpha, beta, pi, mode))
    if mode == "coefficient":
        grad = grad * pi.to(grad.dtype)
    result = grad * slope
    if grad_context is not None:
        hw = x.shape[2] * x.shape[3]
        result = result + (grad_context / hw).to(x.dtype)[:, :, None, None]
    if grad_logits is not None:
        result = result + grad_logits.to(x.dtype) * spatial_weight.to(x.dtype).view(1, -1, 1, 1)
    return result.to(x.dtype)


def spatial_weight_grad_kernel(x: Tensor, grad_logits: Tensor) -> Tensor:
    """dL/dw of the 1x1 spatial conv, shape (C,): sum over N, H, W of grad_logits * x."""
    acc = _accumulate_dtype(x.dtype)
    return (x.to(acc) * grad_logits.to(acc)).sum(dim=(0, 2, 3))


def _compile_enabled() -> bool:
    return os.environ.get("POSE_DYRELU_COMPILE", "1") != "0"


class _Compiled:
    """A function run through torch.compile when possible, eagerly otherwise."""

    broken = False  # shared: after one failure, every function runs eagerly
    # One graph per variant, dtype and the sizes inductor specialises on (a batch or a hidden
    # width of 1, H*W on either side of a loop-choice threshold): a process that uses every
    # variant with mixed precision can pass dynamo's default of 8, after which the function
    # would run eagerly for good.
    recompile_limit = 64

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled = None

    def __call__(self, *args):
        if _Compiled.broken or not _compile_enabled():
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True,
                                          recompile_limit=self.recompile_limit)
        try:
            return self.compiled(*args)
        except Exception as error:  # no C++ compiler, unsupported platform, ...
            _Compiled.broken = True
            warnings.warn(f"torch.compile of the DY-ReLU layer failed, running it eagerly "
                          f"(slower): {type(error).__name__}: {str(error).splitlines()[0]}")
            return self.fn(*args)


# The hyper function: work on (N, C)- and (N, 1, H, W)-sized tensors, in the parameters'
# precision. Written out, forward and backward, so that a layer is two custom operators and
# backward needs no autograd engine (it reruns the two small FCs instead of keeping them).

def coefficients(context: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                 fc2_bias: Tensor, groups: int, k: int, lambda_a: float, lambda_b: float):
    """Residual slopes and intercepts (da, db), each (N, groups, K), from the pooled context
    (N, C), with the hidden activations and the sigmoid output that backward needs."""
    hidden = torch.relu(F.linear(context, fc1_weight, fc1_bias))
    sig = torch.sigmoid(F.linear(hidden, fc2_weight, fc2_bias))
    da, db = _residuals(sig, groups, k, lambda_a, lambda_b)
    return da, db, hidden, sig


def _residuals(sig: Tensor, groups: int, k: int, lambda_a: float, lambda_b: float):
    theta = (2.0 * sig - 1.0).view(sig.shape[0], groups, 2, k)
    return theta[:, :, 0] * lambda_a, theta[:, :, 1] * lambda_b


def attention(logits: Tensor, bias: Tensor, tau: float, gamma: float) -> tuple[Tensor, Tensor]:
    """The spatial attention pi (N, 1, H, W), each value in (0, 1], from the 1x1 spatial conv's
    output without its bias; and the softmax over H*W (N, H*W) it is scaled from."""
    n, _, h, w = logits.shape
    softmax = torch.softmax((logits + bias.to(logits.dtype)).view(n, h * w) / tau, dim=-1)
    return _scaled_attention(softmax, gamma, h, w), softmax


def _scaled_attention(softmax: Tensor, gamma: float, h: int, w: int) -> Tensor:
    return (softmax * (gamma * h * w)).clamp(max=1.0).view(-1, 1, h, w)


def _full_coefficients(da: Tensor, db: Tensor, alpha: Tensor, beta: Tensor, mode: str):
    """(a, b) as the kernels take them: mode "residual" applies alpha, beta itself."""
    if mode == "residual":
        return da, db
    return alpha.to(da.dtype) + da, beta.to(db.dtype) + db


def _coefficients_backward(grad_da: Tensor, grad_db: Tensor, context: Tensor, hidden: Tensor,
                           sig: Tensor, fc1_weight: Tensor, fc2_weight: Tensor,
                           lambda_a: float, lambda_b: float):
    """Gradients of the pooled context, fc1 (weight, bias) and fc2 (weight, bias)."""
    n = context.shape[0]
    grad_theta = torch.stack((grad_da * lambda_a, grad_db * lambda_b), dim=2).view(n, -1)
    grad_fc2 = grad_theta * (2.0 * sig * (1.0 - sig))  # through 2 * sigmoid - 1
    grad_fc1 = (grad_fc2 @ fc2_weight) * (hidden > 0)  # ReLU: no gradient at 0, as autograd
    return (grad_fc1 @ fc1_weight, grad_fc1.T @ context, grad_fc1.sum(0), grad_fc2.T @ hidden,
            grad_fc2.sum(0))


def _attention_backward(grad_pi: Tensor, softmax: Tensor, tau: float, gamma: float):
    """Gradients of the bias-free logits (N, 1, H, W) and of the spatial conv's bias."""
    n, _, h, w = grad_pi.shape
    scale = gamma * h * w
    # clamp(max=1) passes the gradient where its input is at most 1, as autograd does.
    grad_softmax = grad_pi.view(n, h * w) * scale * (softmax * scale <= 1.0)
    grad_z = softmax * (grad_softmax - (grad_softmax * softmax).sum(1, keepdim=True))
    grad_logits = (grad_z / tau).view(n, 1, h, w)
    return grad_logits, grad_logits.sum().view(1)


# The layer's forward and backward, each compiled whole and registered as a custom operator
# below.

def _forward_pass(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                  fc2_bias: Tensor, spatial_weight: Optional[Tensor],
                  spatial_bias: Optional[Tensor], alpha: Tensor, beta: Tensor, groups: int,
                  lambda_a: float, lambda_b: float, tau: float, gamma: float, mode: str):
    """(y, the pooled context, the attention's softmax or None). The small tensors are in the
    parameters' precision; callers turn autocast off."""
    dtype = fc1_weight.dtype
    context_x, logits = context_kernel(x, spatial_weight)
    context_x = context_x.to(dtype)
    da, db, _, _ = coefficients(context_x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, groups,
                                alpha.numel(), lambda_a, lambda_b)
    pi = softmax = None
    if spatial_weight is not None:
        pi, softmax = attention(logits.to(dtype), spatial_bias, tau, gamma)
    a, b = _full_coefficients(da, db, alpha, beta, mode)
    return forward_kernel(x, a, b, alpha, beta, pi, mode), context_x, softmax


class _Passes(NamedTuple):
    """The backward's passes over x: plain functions, or each compiled on its own."""
    coeff_grad: Callable
    attention_grad: Callable
    input_grad: Callable
    spatial_weight_grad: Callable


_PLAIN_PASSES = _Passes(coeff_grad_kernel, attention_grad_kernel, input_grad_kernel,
                        spatial_weight_grad_kernel)


def _backward_pass(grad: Tensor, x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
                   fc2_weight: Tensor, fc2_bias: Tensor, spatial_weight: Optional[Tensor],
                   alpha: Tensor, beta: Tensor, context_x: Tensor, softmax: Tensor, groups: int,
                   lambda_a: float, lambda_b: float, tau: float, gamma: float, mode: str,
                   input_grad: bool, passes: _Passes = _PLAIN_PASSES):
    """Gradients of x (None unless ``input_grad``), fc1 and fc2 (weight, bias), and of the
    spatial conv's weight and bias (None without one)."""
    dtype = fc1_weight.dtype
    h, w = x.shape[2:]
    pi = None if spatial_weight is None else _scaled_attention(softmax, gamma, h, w)
    # Recomputed, not kept from forward: what a layer holds stays x plus 1/C of it.
    da, db, hidden, sig = coefficients(context_x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                       groups, alpha.numel(), lambda_a, lambda_b)
    a, b = _full_coefficients(da, db, alpha, beta, mode)
    grad_da, grad_db = passes.coeff_grad(x, a, b, alpha, beta, pi, mode, grad)
    grad_context, *grad_fc = _coefficients_backward(
        grad_da.to(dtype), grad_db.to(dtype), context_x, hidden, sig, fc1_weight, fc2_weight,
        lambda_a, lambda_b)
    grad_logits = grad_weight = grad_bias = grad_x = None
    if spatial_weight is not None:
        grad_pi = passes.attention_grad(x, a, b, alpha, beta, pi, mode, grad).to(dtype)
        grad_logits, grad_bias = _attention_backward(grad_pi, softmax, tau, gamma)
        grad_weight = passes.spatial_weight_grad(x, grad_logits).to(spatial_weight.dtype)
    if input_grad:
        grad_x = passes.input_grad(x, a, b, alpha, beta, pi, mode, grad, grad_context,
                                   grad_logits, spatial_weight)
    return grad_x, *grad_fc, grad_weight, grad_bias


_compiled_forward = _Compiled(_forward_pass)
_compiled_backward = _Compiled(_backward_pass)
# Mode "residual" (variant C with spatial="residual"): there a piece's slope and intercept
# vary per position (alpha + pi * a). With the backward compiled whole, inductor stored all
# four as full-size tensors, and a layer took up to 5.6x as long (at the synthetic grid's
# shapes) as with each pass compiled on its own and the small work between them run eagerly,
# as here.
_separately_compiled_passes = _Passes(*(_Compiled(fn) for fn in _PLAIN_PASSES))


def _like(x: Tensor, result: Tensor) -> Tensor:
    """``result`` in x's memory layout: the layout the operators' fake versions promise."""
    if result.stride() == x.stride():  # compiled outputs are dense, so x is too
        return result
    out = torch.empty_like(x, dtype=result.dtype)
    return result if out.stride() == result.stride() else out.copy_(result)


# A compiled graph is kept per state it is called in (variant, dtype, whether H*W passes a
# size inductor chose a loop by, ...). So the graphs always get detached tensors (training
# and inference then share one) and run below autograd, as inside a compiled model, where the
# operators are called that way (eager and compiled models then share one). The guard is
# private PyTorch API; without it, eager and compiled models only keep separate graphs.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", contextlib.nullcontext)


def _detached(*tensors: Optional[Tensor]):
    return [None if t is None else t.detach() for t in tensors]


def _layer_forward(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
                   fc2_bias: Tensor, spatial_weight: Optional[Tensor],
                   spatial_bias: Optional[Tensor], alpha: Tensor, beta: Tensor, groups: int,
                   lambda_a: float, lambda_b: float, tau: float, gamma: float, mode: str
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """y and what backward needs: the pooled context and the attention's softmax (empty
    without a spatial conv)."""
    weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias)
    if dyrelu_native.supports(x, *weights, alpha, beta):
        y, context_x, softmax = dyrelu_native.forward(x, *weights, alpha, beta, groups, lambda_a,
                                                      lambda_b, tau, gamma, mode)
    else:
        with _below_autograd(), torch.autocast(x.device.type, enabled=False):
            y, context_x, softmax = _compiled_forward(*_detached(x, *weights), alpha, beta,
                                                      groups, lambda_a, lambda_b, tau, gamma,
                                                      mode)
    if softmax is None:
        softmax = x.new_empty(0, dtype=fc1_weight.dtype)
    return _like(x, y), context_x, softmax


def _layer_backward(grad: Tensor, x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
                    fc2_weight: Tensor, fc2_bias: Tensor, spatial_weight: Optional[Tensor],
                    alpha: Tensor, beta: Tensor, context_x: Tensor, softmax: Tensor, groups: int,
                    lambda_a: float, lambda_b: float, tau: float, gamma: float, mode: str,
                    input_grad: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of x (empty unless ``input_grad``), fc1 and fc2 (weight, bias), and of the
    spatial conv's weight and bias (empty without one)."""
    weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight)
    options = (groups, lambda_a, lambda_b, tau, gamma, mode, input_grad)
    if grad.dtype == x.dtype and dyrelu_native.supports(x, *weights, alpha, beta, context_x,
                                                         softmax):
        grads = dyrelu_native.backward(grad, x, *weights, alpha, beta, context_x, softmax,
                                       *options)
    else:
        with _below_autograd(), torch.autocast(x.device.type, enabled=False):
            inputs = (*_detached(grad, x, *weights), alpha, beta, context_x, softmax, *options)
            if mode == "residual":
                grads = _backward_pass(*inputs, passes=_separately_compiled_passes)
            else:
                grads = _compiled_backward(*inputs)
    grad_x, *grad_fc, grad_weight, grad_bias = grads
    # Outputs may not be None, nor alias each other.
    grad_x = x.new_empty(0) if grad_x is None else _like(x, grad_x)
    grad_spatial = (x.new_empty(0), x.new_empty(0)) if grad_weight is None else (
        grad_weight, grad_bias)
    return (grad_x, *grad_fc, *grad_spatial)


# Under torch.compile, inductor keeps the layer as these two operators (our compiled forward
# and backward run inside), so a compiled model pays what an eager layer costs: traced as
# plain operators, inductor's fused DY-ReLU loops ran 2-3x slower than ours on the CPU
# (README, Performance). Eager mode calls the same two functions from an autograd.Function
# (_DyReLULayer; _NativeDyReLULayer where the native kernels take the layer): through the
# operators' dispatch and autograd wrapper a layer took about 0.1 ms more. Inductor's on-disk
# cache knows the operators by name: a change to their signature needs a new name, or
# compiled models may run code cached for the old one.
_dyrelu_op = torch.library.custom_op("pose::dyrelu", _layer_forward, mutates_args=())
_dyrelu_backward_op = torch.library.custom_op("pose::dyrelu_backward", _layer_backward,
                                              mutates_args=())


@_dyrelu_op.register_fake
def _(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias, alpha, beta,
      groups, lambda_a, lambda_b, tau, gamma, mode):
    n, c, h, w = x.shape
    softmax_shape = (n, h * w) if spatial_weight is not None else (0,)
    return (torch.empty_like(x), x.new_empty((n, c), dtype=fc1_weight.dtype),
            x.new_empty(softmax_shape, dtype=fc1_weight.dtype))


@_dyrelu_backward_op.register_fake
def _(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, alpha, beta,
      context_x, softmax, groups, lambda_a, lambda_b, tau, gamma, mode, input_grad):
    spatial = (x.new_empty(0), x.new_empty(0)) if spatial_weight is None else (
        torch.empty_like(spatial_weight), fc1_weight.new_empty(1))
    return (torch.empty_like(x) if input_grad else x.new_empty(0), torch.empty_like(fc1_weight),
            torch.empty_like(fc1_bias), torch.empty_like(fc2_weight), torch.empty_like(fc2_bias),
            *spatial)


def _save(ctx, inputs, context_x: Tensor, softmax: Tensor) -> None:
    x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, _, alpha, beta, *options = inputs
    # Saved: what the layer keeps of its input (x plus 1/C of it). The hyper function's
    # parameters are held as the module holds them; they are no activation memory.
    ctx.save_for_backward(x, spatial_weight, alpha, beta, context_x, softmax)
    ctx.hyper_weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    ctx.options = options


def _setup_context(ctx, inputs, output):
    _, context_x, softmax = output
    ctx.mark_non_differentiable(context_x, softmax)
    _save(ctx, inputs, context_x, softmax)


def _backward(ctx, grad_y, *_, layer_backward=_dyrelu_backward_op):
    needs = ctx.needs_input_grad
    x, spatial_weight, alpha, beta, context_x, softmax = ctx.saved_tensors
    grads = layer_backward(grad_y, x, *ctx.hyper_weights, spatial_weight, alpha, beta,
                           context_x, softmax, *ctx.options, needs[0])
    # Gradients of x, fc1, fc2 and the spatial conv (inputs 0-6); none for the rest.
    return (*(g if need else None for g, need in zip(grads, needs)), *[None] * 8)


_dyrelu_op.register_autograd(_backward, setup_context=_setup_context)


class _DyReLULayer(torch.autograd.Function):
    """The eager path: the operators' functions, with the same backward as their autograd.
    Its only output is y (the operator's other two stay on ctx): autograd then tracks one
    output, not three."""

    @staticmethod
    def forward(ctx, *inputs):
        y, context_x, softmax = _layer_forward(*inputs)
        _save(ctx, inputs, context_x, softmax)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        return _backward(ctx, grad_y, layer_backward=_layer_backward)


class _NativeDyReLULayer(torch.autograd.Function):
    """The eager path where the native kernels take the layer: _DyReLULayer less the work of
    choosing a path per call (decided once, in dyrelu, for forward and backward) and of the
    operators' argument lists. It matters more than its microseconds suggest: in a model a
    layer's Python runs after big layers have flushed the caches, which makes it about three
    times as slow as in a loop of its own (README, Performance)."""

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight,
                spatial_bias, alpha, beta, options):
        y, context_x, softmax = dyrelu_native.forward(
            x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias, alpha,
            beta, *options)
        ctx.save_for_backward(x, context_x, softmax)  # as _save: x plus 1/C of it
        ctx.weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, alpha, beta)
        ctx.options = options
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, context_x, softmax = ctx.saved_tensors
        grads = dyrelu_native.backward(grad_y, x, *ctx.weights, context_x, softmax, *ctx.options,
                                       ctx.needs_input_grad[0])
        return (*grads, None, None, None)


def dyrelu(x: Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear, alpha: Tensor, beta: Tensor,
           groups: int, lambda_a: float, lambda_b: float, mode: str = "plain",
           spatial_conv: Optional[torch.nn.Conv2d] = None, tau: float = 10.0,
           gamma: float = 1.0 / 3.0) -> Tensor:
    """Apply one DY-ReLU layer to x (N, C, H, W).

    Args:
        fc1, fc2: the hyper function, context (N, C) -> (N, groups * 2 * K): for each group
            first the K slope residuals, then the K intercept residuals (each in [-1, 1]
            before the lambda scale).
        alpha, beta: the K static slopes and intercepts.
        groups: 1 (coefficients shared by the channels) or C.
        mode: ``"plain"``, ``"coefficient"`` or ``"residual"`` (module docstring); the last two
            need ``spatial_conv``, the 1x1 conv C -> 1 of the spatial attention.
        tau, gamma: the attention's softmax temperature and scale (a fraction of H*W).
    """
    if mode not in MODES:
        raise ValueError(f"dyrelu mode must be one of {MODES}, got {mode!r}")
    if (spatial_conv is None) != (mode == "plain"):
        raise ValueError(f"dyrelu mode {mode!r} {'needs' if mode != 'plain' else 'takes no'} "
                         f"spatial_conv")
    spatial_weight = spatial_bias = None
    if spatial_conv is not None:
        spatial_weight, spatial_bias = spatial_conv.weight, spatial_conv.bias
    hyper = (fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    options = (groups, lambda_a, lambda_b, tau, gamma, mode)
    exporting, compiling = _exporting(), torch.compiler.is_compiling()
    if (not exporting and not compiling
            and dyrelu_native.supports(x, *hyper, spatial_weight, spatial_bias, alpha, beta)):
        # The conv's (1, C, 1, 1) weight is C contiguous values to the kernels, unviewed.
        return _NativeDyReLULayer.apply(x, *hyper, spatial_weight, spatial_bias, alpha, beta,
                                        options)
    if spatial_weight is not None:
        # A plain view: torch.compile treats an nn.Parameter's shape as static and would
        # recompile the kernels for every channel count.
        spatial_weight = spatial_weight.view(-1)
    if exporting:
        return _plain_dyrelu(x, fc1, fc2, alpha, beta, groups, lambda_a, lambda_b, mode,
                             spatial_weight, spatial_bias, tau, gamma)
    inputs = (x, *hyper, spatial_weight, spatial_bias, alpha, beta, *options)
    if compiling:
        return _dyrelu_op(*inputs)[0]
    return _DyReLULayer.apply(*inputs)


_plain_operators = False


@contextlib.contextmanager
def plain_operators():
    """Run DY-ReLU layers as plain PyTorch operators while inside: what exporters trace, and
    what operator-counting tools (torch.utils.flop_counter, pose.complexity) must see, since
    the native kernels' arithmetic is invisible to them."""
    global _plain_operators
    previous, _plain_operators = _plain_operators, True
    try:
        yield
    finally:
        _plain_operators = previous


def _exporting() -> bool:
    """True while an exporter traces the model, or inside plain_operators(): they must see
    plain operators, not ours. torch.export sets is_exporting (strict mode traces through
    dynamo, which dyrelu checks too); the TorchScript ONNX exporter and jit.trace set
    is_tracing, and the torch.export-based ONNX exporter runs torch.export. So
    torch.onnx.is_in_onnx_export() is not asked: it imports two modules per call, which
    after a cache flush took 16 of this check's 27 us."""
    return _plain_operators or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _plain_dyrelu(x, fc1, fc2, alpha, beta, groups, lambda_a, lambda_b, mode, spatial_weight,
                  spatial_bias, tau, gamma):
    """The layer as plain differentiable operators, for exporters."""
    with torch.autocast(x.device.type, enabled=False):
        return _forward_pass(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, spatial_weight,
                             spatial_bias, alpha, beta, groups, lambda_a, lambda_b, tau, gamma,
                             mode)[0]
