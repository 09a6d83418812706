"""Memory-lean piecewise-linear maximum, the arithmetic core of DY-ReLU.

    y[n, c, h, w] = s[n, 0, h, w] * max_k ( a[n, g, k] * x[n, c, h, w] + b[n, g, k] )

with g = c for channel-wise coefficients (G = C) or g = 0 for shared ones (G = 1), and an
optional non-negative spatial scale s. A naive version stacks K affine maps into an
(N, C, H, W, K) tensor and autograd keeps it for backward. Here the forward never builds it
and the backward keeps only x, a, b and s: it recomputes which piece won at each element.
"""
from __future__ import annotations

from typing import Optional

import torch


def _expand(coeff: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    return coeff[:, :, k, None, None].to(dtype)  # (N, G, 1, 1)


def _forward_max(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """max_k(a_k x + b_k) and the index of the winning piece (None when K = 1).

    Ties go to the later piece, so with ReLU's coefficients the gradient at x = 0 is 0,
    as it is for ``torch.relu``.
    """
    best = torch.addcmul(_expand(b, 0, x.dtype), _expand(a, 0, x.dtype), x)
    winner = None
    for k in range(1, a.shape[-1]):
        value = torch.addcmul(_expand(b, k, x.dtype), _expand(a, k, x.dtype), x)
        wins = value >= best
        if winner is None:
            winner = wins.to(torch.uint8)
        else:
            winner.masked_fill_(wins, k)
        best = torch.maximum(best, value)
    return best, winner


class _PiecewiseMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, scale):
        with torch.no_grad():
            y, _ = _forward_max(x, a, b)
            if scale is not None:
                y.mul_(scale.to(y.dtype))
        ctx.save_for_backward(x, a, b, scale)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, a, b, scale = ctx.saved_tensors
        k_pieces, shared = a.shape[-1], a.shape[1] == 1
        best, winner = _forward_max(x, a, b)
        grad_scale = None
        if scale is not None:
            if ctx.needs_input_grad[3]:
                grad_scale = (grad_y * best).sum(dim=1, keepdim=True, dtype=torch.float32)
                grad_scale = grad_scale.to(scale.dtype)
            grad_y = grad_y * scale.to(grad_y.dtype)
        del best
        # Slope of the winning piece at every element (N, C, H, W).
        slope = _expand(a, 0, x.dtype)
        for k in range(1, k_pieces):
            slope = torch.where(winner == k, _expand(a, k, x.dtype), slope)
        grad_x = grad_y * slope if ctx.needs_input_grad[0] else None

        # Coefficient gradients: reduce over H, W (and C when shared), accumulating in fp32.
        dims = (1, 2, 3) if shared else (2, 3)
        gx = grad_y * x

        def reduce(t):
            t = t.sum(dim=dims, dtype=torch.float32)
            return t.view(t.shape[0], 1) if shared else t  # (N, G)

        total_a, total_b = reduce(gx), reduce(grad_y)
        grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
        grad_b = torch.zeros_like(grad_a)
        for k in range(1, k_pieces):
            mask = winner == k
            grad_a[..., k] = reduce(gx * mask)
            grad_b[..., k] = reduce(grad_y * mask)
        # Piece 0 takes what the others did not.
        grad_a[..., 0] = total_a - grad_a[..., 1:].sum(-1)
        grad_b[..., 0] = total_b - grad_b[..., 1:].sum(-1)
        return grad_x, grad_a.to(a.dtype), grad_b.to(b.dtype), grad_scale


def piecewise_max(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``scale * max_k(a_k * x + b_k)`` per channel.

    Args:
        x: (N, C, H, W) input.
        a, b: (N, G, K) slopes and intercepts, G in {1, C}.
        scale: optional (N, 1, H, W) non-negative spatial scale.
    Returns:
        (N, C, H, W), in x's dtype and memory format.
    """
    if a.shape != b.shape or a.dim() != 3 or a.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"piecewise_max: a, b must be (N, 1 or C, K) for x {tuple(x.shape)}, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    return _PiecewiseMax.apply(x, a, b, scale)
