"""Memory-lean, fused piecewise-linear maximum: the arithmetic core of DY-ReLU.

    y[n, c, h, w] = s[n, 0, h, w] * max_k ( a[n, g, k] * x[n, c, h, w] + b[n, g, k] )

with g = c for channel-wise coefficients (G = C) or g = 0 for shared ones (G = 1), and an
optional non-negative spatial scale s.

Memory: a naive version stacks K affine maps into an (N, C, H, W, K) tensor and autograd keeps
it for backward. Here the forward never builds it and the backward keeps only x, a, b and s,
recomputing which piece won at each element.

Speed: in eager mode each arithmetic step is one pass over memory, a dozen passes where ReLU
needs two. The four kernels below (forward, input gradient, coefficient gradients, scale
gradient) are therefore compiled with ``torch.compile`` (inductor), which fuses each into one
or two loops. Compiling them as four separate graphs matters: fused into one graph, the
reductions over (H, W) and over C get a poor loop order. They are compiled with dynamic shapes,
so one compilation serves every layer. Set ``POSE_DYRELU_COMPILE=0`` to run them eagerly; if
compilation fails the eager kernels take over with a warning.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def _piece(coeff: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    return coeff[:, :, k].to(dtype).contiguous()[:, :, None, None]  # (N, G, 1, 1)


def _winner(x: Tensor, a: Tensor, b: Tensor) -> Optional[Tensor]:
    """Index (as x's dtype) of the winning piece per element; ties go to the later piece, so
    with ReLU's coefficients the gradient at x = 0 is 0, as for ``torch.relu``."""
    k_pieces = a.shape[-1]
    if k_pieces == 1:
        return None
    best = _piece(a, 0, x.dtype) * x + _piece(b, 0, x.dtype)
    winner = torch.zeros_like(x)
    for k in range(1, k_pieces):
        value = _piece(a, k, x.dtype) * x + _piece(b, k, x.dtype)
        wins = (value >= best).to(x.dtype)
        winner = winner + (k - winner) * wins
        best = torch.maximum(best, value)
    return winner


def _mask(winner: Tensor, k: int, k_pieces: int) -> Tensor:
    return winner if k_pieces == 2 else (winner == k).to(winner.dtype)


def forward_kernel(x: Tensor, a: Tensor, b: Tensor, scale: Optional[Tensor]) -> Tensor:
    y = _piece(a, 0, x.dtype) * x + _piece(b, 0, x.dtype)
    for k in range(1, a.shape[-1]):
        y = torch.maximum(y, _piece(a, k, x.dtype) * x + _piece(b, k, x.dtype))
    return y if scale is None else y * scale.to(x.dtype)


def input_grad_kernel(x: Tensor, a: Tensor, b: Tensor, scale: Optional[Tensor],
                      grad: Tensor) -> Tensor:
    """dL/dx = grad * scale * (slope of the winning piece)."""
    k_pieces = a.shape[-1]
    slope = _piece(a, 0, x.dtype)
    winner = _winner(x, a, b)
    for k in range(1, k_pieces):
        slope = slope + _mask(winner, k, k_pieces) * (_piece(a, k, x.dtype) -
                                                      _piece(a, 0, x.dtype))
    if scale is not None:
        grad = grad * scale.to(grad.dtype)
    return grad * slope


def coeff_grad_kernel(x: Tensor, a: Tensor, b: Tensor, scale: Optional[Tensor],
                      grad: Tensor) -> tuple[Tensor, Tensor]:
    """dL/da, dL/db of shape (N, G, K) in float32: sums over H, W (and C when G = 1)."""
    k_pieces, dims = a.shape[-1], ((1, 2, 3) if a.shape[1] == 1 else (2, 3))
    if scale is not None:
        grad = grad * scale.to(grad.dtype)
    grad = grad.float()
    gx = grad * x.float()
    total_a, total_b = gx.sum(dims), grad.sum(dims)  # (N, G') with G' = G, or (N,) if shared
    grads_a, grads_b = [], []
    winner = _winner(x, a, b)
    for k in range(1, k_pieces):
        mask = _mask(winner, k, k_pieces).float()
        grads_a.append((gx * mask).sum(dims))
        grads_b.append((grad * mask).sum(dims))
    # Piece 0 takes what the others did not.
    grads_a.insert(0, total_a - sum(grads_a) if grads_a else total_a)
    grads_b.insert(0, total_b - sum(grads_b) if grads_b else total_b)
    shape = (x.shape[0], a.shape[1], k_pieces)
    return torch.stack(grads_a, -1).reshape(shape), torch.stack(grads_b, -1).reshape(shape)


def scale_grad_kernel(x: Tensor, a: Tensor, b: Tensor, grad: Tensor) -> Tensor:
    """dL/ds of shape (N, 1, H, W) in float32: sum over C of grad * max_k(a_k x + b_k)."""
    return (grad.float() * forward_kernel(x, a, b, None).float()).sum(1, keepdim=True)


def _compile_enabled() -> bool:
    return os.environ.get("POSE_DYRELU_COMPILE", "1") != "0"


class _Kernel:
    """A kernel run through torch.compile when possible, eagerly otherwise."""

    broken = False  # shared: after one failure, every kernel runs eagerly

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled = None

    def __call__(self, *args):
        if (_Kernel.broken or not _compile_enabled() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
                or torch.jit.is_tracing()):
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


_forward = _Kernel(forward_kernel)
_input_grad = _Kernel(input_grad_kernel)
_coeff_grad = _Kernel(coeff_grad_kernel)
_scale_grad = _Kernel(scale_grad_kernel)


class _PiecewiseMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, scale):
        ctx.save_for_backward(x, a, b, scale)
        return _forward(x, a, b, scale)

    @staticmethod
    def backward(ctx, grad_y):
        x, a, b, scale = ctx.saved_tensors
        grad_x = grad_a = grad_b = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(x, a, b, scale, grad_y)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_a, grad_b = _coeff_grad(x, a, b, scale, grad_y)
            grad_a, grad_b = grad_a.to(a.dtype), grad_b.to(b.dtype)
        if scale is not None and ctx.needs_input_grad[3]:
            grad_scale = _scale_grad(x, a, b, grad_y).to(scale.dtype)
        return grad_x, grad_a, grad_b, grad_scale


def piecewise_max(x: Tensor, a: Tensor, b: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    """``scale * max_k(a_k * x + b_k)`` per channel.

    Args:
        x: (N, C, H, W) input.
        a, b: (N, G, K) slopes and intercepts, G in {1, C}.
        scale: optional (N, 1, H, W) non-negative spatial scale.
    Returns:
        (N, C, H, W), in x's dtype.
    """
    if not torch.jit.is_tracing() and (a.shape != b.shape or a.dim() != 3
                                       or a.shape[1] not in (1, x.shape[1])):
        raise ValueError(f"piecewise_max: a, b must be (N, 1 or C, K) for x {tuple(x.shape)}, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, a, b, scale))
    if not needs_grad:
        return _forward(x, a, b, scale)
    return _PiecewiseMax.apply(x, a, b, scale)
