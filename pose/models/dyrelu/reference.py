"""DY-ReLU as written in the paper (Chen et al., ECCV 2020), in plain differentiable torch
operators: the ground truth of the tests, what exporters trace, and what the complexity
counter counts. The fast backends (``ops.py``) compute the same function.

For x of shape (N, C, H, W):

    context  = mean_{h,w} x                                   (N, C)
    theta    = 2 sigmoid(fc2(relu(fc1(context)))) - 1         (N, G, 2, K), G = C or 1
    da, db   = lambda_a theta[:, :, 0], lambda_b theta[:, :, 1]
    a_k, b_k = alpha_k + da_k, beta_k + db_k,   alpha = (1, 0, ..., 0), beta = 0
    y        = max_k (a_k x + b_k)

so zero residuals give exactly ReLU. Variant C adds a spatial attention from a 1x1 conv
C -> 1:

    pi = min(gamma H W softmax_{h,w}(conv1x1(x) / tau), 1)    (N, 1, H, W)

mode "coefficient" (the paper's formula) scales the whole coefficients, which is the same as
scaling the output since pi > 0: y = pi max_k (a_k x + b_k); mode "residual" scales only the
residuals: y = max_k ((alpha_k + pi da_k) x + beta_k + pi db_k).

The hyper function's output of G * 2K values is laid out per group as K slope residuals, then
K intercept residuals. The small tensors (context, coefficients, attention) are computed in the
parameters' precision; the maximum in x's (bfloat16 under autocast).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pose.models.dyrelu.settings import DyReLUSettings

Tensor = torch.Tensor


def static_coefficients(k: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor,
                                                                                   Tensor]:
    """alpha = (1, 0, ..., 0) and beta = 0, each (K,)."""
    alpha = torch.zeros(k, dtype=dtype, device=device)
    alpha[0] = 1.0
    return alpha, torch.zeros(k, dtype=dtype, device=device)


def residuals(context: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
              fc2_bias: Tensor, settings: DyReLUSettings) -> tuple[Tensor, Tensor]:
    """The hyper function: residual slopes and intercepts (da, db), each (N, G, K), from the
    pooled context (N, C)."""
    n, k = context.shape[0], settings.k
    hidden = torch.relu(F.linear(context, fc1_weight, fc1_bias))
    theta = 2.0 * torch.sigmoid(F.linear(hidden, fc2_weight, fc2_bias)) - 1.0
    theta = theta.view(n, -1, 2, k)
    return settings.lambda_a * theta[:, :, 0], settings.lambda_b * theta[:, :, 1]


def attention(logits: Tensor, spatial_bias: Tensor, settings: DyReLUSettings) -> Tensor:
    """pi (N, 1, H, W), each value in (0, 1], from the 1x1 conv's output without its bias."""
    n, _, h, w = logits.shape
    soft = torch.softmax((logits + spatial_bias).view(n, h * w) / settings.tau, dim=1)
    return torch.clamp(settings.gamma * h * w * soft, max=1.0).view(n, 1, h, w)


def dyrelu(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
           fc2_bias: Tensor, spatial_weight: Optional[Tensor], spatial_bias: Optional[Tensor],
           settings: DyReLUSettings) -> Tensor:
    """One DY-ReLU layer on x (N, C, H, W). It stacks the K pieces on a last axis,
    (N, C, H, W, K), and autograd keeps that: clear, not lean."""
    dtype = fc1_weight.dtype
    context = x.mean(dim=(2, 3), dtype=torch.promote_types(x.dtype, torch.float32)).to(dtype)
    da, db = residuals(context, fc1_weight, fc1_bias, fc2_weight, fc2_bias, settings)
    alpha, beta = static_coefficients(settings.k, dtype, x.device)
    da, db = da[:, :, None, None, :], db[:, :, None, None, :]  # (N, G, 1, 1, K)
    a, b = alpha + da, beta + db
    if settings.has_attention:
        # The 1x1 conv C -> 1 as a weighted channel sum: counted by pose.complexity per position.
        logits = (x.to(dtype) * spatial_weight.reshape(1, -1, 1, 1)).sum(1, keepdim=True)
        pi = attention(logits, spatial_bias, settings)[..., None]  # (N, 1, H, W, 1)
        if settings.spatial == "coefficient":
            a, b = pi * a, pi * b
        else:
            a, b = alpha + pi * da, beta + pi * db
    pieces = a.to(x.dtype) * x[..., None] + b.to(x.dtype)  # (N, C, H, W, K)
    return pieces.max(dim=-1).values
