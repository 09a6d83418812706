"""Memory-lean, fused DY-ReLU: the passes over the (N, C, H, W) input of one layer.

For x of shape (N, C, H, W), coefficients a, b of shape (N, G, K) (G = C channel-wise, G = 1
shared) and, for variant C, a spatial attention pi of shape (N, 1, H, W), a layer computes

    mode "plain":       y = max_k ( a_k x + b_k )
    mode "coefficient": y = pi * max_k ( a_k x + b_k )                 (the paper's variant C)
    mode "residual":    y = max_k ( (alpha_k + pi a_k) x + beta_k + pi b_k )

where in the first two modes a, b already include the static alpha, beta, and in "residual"
they are only the residuals. The small tensors (pooled context, hyper-function output,
attention) come from a callable the module passes in; this file only handles what touches
every element.

Memory: a naive version stacks K affine maps into an (N, C, H, W, K) tensor and autograd keeps
it. Here backward keeps only x and the small tensors and recomputes which piece won.

Speed: ReLU makes about five passes over memory per forward+backward. A layer here makes the
fewest this algorithm allows: forward reads x for the pooled context (and for variant C the
attention logits), then reads x and writes y; backward reads x and the output gradient once
for the coefficient gradients (and once for the attention gradient), then once to write the
input gradient, into which the gradients through the pooling and the 1x1 spatial conv are
folded, so autograd never adds a broadcast gradient pass. Each kernel below is compiled with
``torch.compile`` (inductor) into one or two loops, with dynamic shapes so one compilation
serves every layer. Kernels compiled per shape ran 10-25% faster on their own, but a whole
train step at 256x192 did not get faster, and each new shape cost seconds of compilation.
Separate graphs matter: fused into one, the reductions over (H, W) and over C get a poor
loop order. ``POSE_DYRELU_COMPILE=0`` runs the kernels eagerly; if compilation fails they
run eagerly with a warning.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch

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
    pieces = _pieces(x, a, b, alpha, beta, pi, mode)
    masks = _winner_masks(x, pieces)
    slope = masks[0] * pieces[0][0]
    for mask, (piece_slope, _) in zip(masks[1:], pieces[1:]):
        slope = slope + mask * piece_slope
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


def eager_required() -> bool:
    """True while something traces the model (export, whole-model torch.compile): it must see
    plain differentiable operators, not our compiled kernels or custom backward."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


class _Kernel:
    """A kernel run through torch.compile when possible, eagerly otherwise."""

    broken = False  # shared: after one failure, every kernel runs eagerly

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled = None

    def __call__(self, *args):
        if _Kernel.broken or not _compile_enabled() or eager_required():
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self.compiled(*args)
        except Exception as error:  # no C++ compiler, unsupported platform, ...
            _Kernel.broken = True
            warnings.warn(f"torch.compile of the DY-ReLU kernels failed, running them eagerly "
                          f"(slower): {type(error).__name__}: {str(error).splitlines()[0]}")
            return self.fn(*args)


context = _Kernel(context_kernel)
forward = _Kernel(forward_kernel)
_coeff_grad = _Kernel(coeff_grad_kernel)
_attention_grad = _Kernel(attention_grad_kernel)
_input_grad = _Kernel(input_grad_kernel)
_spatial_weight_grad = _Kernel(spatial_weight_grad_kernel)

# (context (N, C), logits (N, 1, H, W) or None) -> (a, b, pi or None), differentiable.
HyperFunction = Callable[[Tensor, Optional[Tensor]], tuple[Tensor, Tensor, Optional[Tensor]]]


class _DyReLULayer(torch.autograd.Function):
    """One DY-ReLU layer. Autograd sees x, the 1x1 spatial conv weight and the hyper function's
    parameters as inputs; backward rebuilds the small hyper-function graph from the saved
    pooled context and logits and differentiates it with ``torch.autograd.grad``."""

    @staticmethod
    def forward(ctx, x, spatial_weight, hyper, mode, alpha, beta, *hyper_params):
        context_x, logits = context(x, spatial_weight)
        with torch.no_grad():
            a, b, pi = hyper(context_x, logits)
        ctx.hyper, ctx.mode, ctx.hyper_params = hyper, mode, hyper_params
        ctx.save_for_backward(x, spatial_weight, alpha, beta, context_x, logits)
        return forward(x, a, b, alpha, beta, pi, mode)

    @staticmethod
    def backward(ctx, grad_y):
        x, spatial_weight, alpha, beta, context_x, logits = ctx.saved_tensors
        # Recomputing the small graph keeps what a layer holds for backward at x plus 1/C of
        # it: kept from forward instead, variant C would hold several (N, 1, H, W) tensors,
        # and the whole-model step measured no faster.
        with torch.enable_grad():
            context_x = context_x.detach().requires_grad_()
            logits = None if logits is None else logits.detach().requires_grad_()
            a, b, pi = ctx.hyper(context_x, logits)
        small = (a.detach(), b.detach(), alpha, beta, None if pi is None else pi.detach())
        grad_a, grad_b = _coeff_grad(x, *small, ctx.mode, grad_y)
        outputs, grads = [a, b], [grad_a.to(a.dtype), grad_b.to(b.dtype)]
        if pi is not None:
            outputs.append(pi)
            grads.append(_attention_grad(x, *small, ctx.mode, grad_y).to(pi.dtype))
        params = [p for p in ctx.hyper_params if p.requires_grad]
        wrt = [context_x] + ([logits] if logits is not None else []) + params
        found = list(torch.autograd.grad(outputs, wrt, grads, allow_unused=True))
        grad_context = found.pop(0)
        grad_logits = found.pop(0) if logits is not None else None
        param_grads = iter(found)
        grad_params = [next(param_grads) if p.requires_grad else None
                       for p in ctx.hyper_params]
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(x, *small, ctx.mode, grad_y, grad_context, grad_logits,
                                 spatial_weight)
        if spatial_weight is not None and ctx.needs_input_grad[1]:
            grad_weight = _spatial_weight_grad(x, grad_logits).to(spatial_weight.dtype)
            grad_weight = grad_weight.view(spatial_weight.shape)
        return (grad_x, grad_weight, None, None, None, None, *grad_params)


def dyrelu(x: Tensor, hyper: HyperFunction, mode: str, alpha: Tensor, beta: Tensor,
           hyper_params: tuple[Tensor, ...], spatial_weight: Optional[Tensor] = None) -> Tensor:
    """Apply one DY-ReLU layer to x (N, C, H, W).

    Args:
        hyper: maps the pooled context (N, C) and, for variant C, the bias-free attention
            logits (N, 1, H, W) to (a, b, pi); any parameters it uses must be in
            ``hyper_params`` so that they receive gradients.
        mode: ``"plain"``, ``"coefficient"`` or ``"residual"`` (module docstring).
        alpha, beta: the K static slopes and intercepts (used by mode "residual").
        spatial_weight: the 1x1 spatial conv's weight (any shape with C elements), variant C.
    """
    if mode not in MODES:
        raise ValueError(f"dyrelu mode must be one of {MODES}, got {mode!r}")
    if (spatial_weight is None) != (mode == "plain"):
        raise ValueError(f"dyrelu mode {mode!r} {'needs' if mode != 'plain' else 'takes no'} "
                         f"spatial_weight")
    if spatial_weight is not None and not eager_required():
        # Kernels get a plain tensor: torch.compile treats an nn.Parameter's shape as static
        # and would recompile for every channel count.
        spatial_weight = spatial_weight.view(-1)
    if eager_required():
        # Plain operators, differentiated by autograd (or traced by an exporter).
        context_x, logits = context_kernel(x, spatial_weight)
        a, b, pi = hyper(context_x, logits)
        return forward_kernel(x, a, b, alpha, beta, pi, mode)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, spatial_weight, *hyper_params))
    if not needs_grad:
        context_x, logits = context(x, spatial_weight)
        a, b, pi = hyper(context_x, logits)
        return forward(x, a, b, alpha, beta, pi, mode)
    return _DyReLULayer.apply(x, spatial_weight, hyper, mode, alpha, beta, *hyper_params)
