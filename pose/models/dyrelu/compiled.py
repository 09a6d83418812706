"""The compiled backend: a DY-ReLU layer's forward and backward as fused passes over x,
each compiled whole with ``torch.compile`` (inductor: C++ loops on the CPU, Triton on CUDA).
It serves every device and dtype, bfloat16 under autocast and channels_last included.

Memory: backward keeps only x, the pooled context (N, C) and, for variant C, the attention's
softmax (N, H*W), and recomputes the hyper function and which piece won, so a layer holds
about what ReLU holds. The reference (``reference.py``) keeps an (N, C, H, W, K) tensor.

Passes over x: forward reads x for the pooled context (and variant C's attention logits),
then reads x and writes y. Backward reads x and the output gradient for the coefficient
gradients (and the attention gradient), then once to write the input gradient, into which the
gradients through the pooling and the 1x1 conv are folded.

Dynamic shapes: one compilation serves layers of every size. Mode "residual" keeps its
backward passes compiled one by one, with the small work between them eager: compiled whole,
inductor stores its per-position slopes and intercepts as full-size tensors.

``forward`` and ``backward`` keep the contract of every fast backend (ops.py) and take the
settings record itself. A model compiled whole traces them into its own graphs. The small
tensors are in the parameters' precision.
"""
from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from pose.models.dyrelu.settings import DyReLUSettings

Tensor = torch.Tensor


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _piece(coeff: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """Piece k of (N, G, K) coefficients as (N, G, 1, 1), broadcastable against x."""
    return coeff[:, :, k].to(dtype)[:, :, None, None]


def _pieces(x: Tensor, a: Tensor, b: Tensor, pi: Optional[Tensor], mode: str
            ) -> list[tuple[Tensor, Tensor]]:
    """(slope, intercept) of each piece, broadcastable against x. In mode "residual", a and b
    are the residuals and the static alpha = (1, 0, ...), beta = 0 are added per position."""
    pieces = []
    for k in range(a.shape[-1]):
        slope, intercept = _piece(a, k, x.dtype), _piece(b, k, x.dtype)
        if mode == "residual":
            p = pi.to(x.dtype)
            slope = p * slope + (1.0 if k == 0 else 0.0)  # (N, G, H, W)
            intercept = p * intercept
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
        wins = (value >= best).to(x.dtype)  # arithmetic masks fuse better than torch.where
        winner = winner + (k - winner) * wins
        best = torch.maximum(best, value)
    if len(pieces) == 2:
        return [1 - winner, winner]
    return [(winner == k).to(x.dtype) for k in range(len(pieces))]


def _winning_slope(x: Tensor, pieces: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The winning piece's slope at each element, ties to the later piece. The test is
    (a_k - a_best) x >= b_best - b_k rather than _winner_masks' operations: written the same,
    the backward graph's common-subexpression pass merges them and inductor stores the mask
    (a full-size write) instead of recomputing it in the input-gradient loop."""
    best_slope, best_intercept = pieces[0]
    for slope, intercept in pieces[1:]:
        wins = (slope - best_slope) * x >= best_intercept - intercept
        best_slope = torch.where(wins, slope, best_slope)
        best_intercept = torch.where(wins, intercept, best_intercept)
    return best_slope if len(pieces) > 1 else best_slope.expand_as(x)


# The passes over x.

def context_pass(x: Tensor, spatial_weight: Optional[Tensor]):
    """The pooled context (N, C) and, for variant C, the bias-free attention logits
    (N, 1, H, W) of the 1x1 conv C -> 1."""
    acc = _accumulate_dtype(x.dtype)
    context = x.mean(dim=(2, 3), dtype=acc)
    if spatial_weight is None:
        return context, None
    logits = (x.to(acc) * spatial_weight.to(acc).view(1, -1, 1, 1)).sum(1, keepdim=True)
    return context, logits


def output_pass(x: Tensor, a: Tensor, b: Tensor, pi: Optional[Tensor], mode: str) -> Tensor:
    pieces = _pieces(x, a, b, pi, mode)
    y = pieces[0][0] * x + pieces[0][1]
    for slope, intercept in pieces[1:]:
        y = torch.maximum(y, slope * x + intercept)
    return y * pi.to(x.dtype) if mode == "coefficient" else y


def coeff_grad_pass(x: Tensor, a: Tensor, b: Tensor, pi: Optional[Tensor], mode: str,
                    grad: Tensor):
    """dL/da, dL/db (N, G, K): sums over H, W (and C when G = 1) of the output gradient where
    each piece wins, times x for the slopes. Either attention mode brings one factor pi."""
    acc = _accumulate_dtype(x.dtype)
    dims = (1, 2, 3) if a.shape[1] == 1 else (2, 3)
    masks = _winner_masks(x, _pieces(x, a, b, pi, mode))
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


def attention_grad_pass(x: Tensor, a: Tensor, b: Tensor, pi: Tensor, mode: str,
                        grad: Tensor) -> Tensor:
    """dL/dpi (N, 1, H, W): the sum over C of the output gradient times the winning piece
    (mode "coefficient") or its residual part da_k x + db_k (mode "residual")."""
    acc = _accumulate_dtype(x.dtype)
    if mode == "coefficient":
        y = output_pass(x, a, b, None, "plain")
        return (grad.to(acc) * y.to(acc)).sum(1, keepdim=True)
    masks = _winner_masks(x, _pieces(x, a, b, pi, mode))
    residual = 0
    for k, mask in enumerate(masks):
        residual = residual + mask * (_piece(a, k, x.dtype) * x + _piece(b, k, x.dtype))
    return (grad.to(acc) * residual.to(acc)).sum(1, keepdim=True)


def input_grad_pass(x: Tensor, a: Tensor, b: Tensor, pi: Optional[Tensor], mode: str,
                    grad: Tensor, grad_context: Tensor, grad_logits: Optional[Tensor],
                    spatial_weight: Optional[Tensor]) -> Tensor:
    """dL/dx: the output gradient times the winning slope, plus the gradients that reach x
    through the mean pooling (grad_context / HW) and the 1x1 conv."""
    slope = _winning_slope(x, _pieces(x, a, b, pi, mode))
    if mode == "coefficient":
        grad = grad * pi.to(grad.dtype)
    result = grad * slope
    hw = x.shape[2] * x.shape[3]
    result = result + (grad_context / hw).to(x.dtype)[:, :, None, None]
    if grad_logits is not None:
        result = result + grad_logits.to(x.dtype) * spatial_weight.to(x.dtype).view(1, -1, 1, 1)
    return result.to(x.dtype)


def spatial_weight_grad_pass(x: Tensor, grad_logits: Tensor) -> Tensor:
    """dL/dw of the 1x1 conv (C,): the sum over N, H, W of grad_logits * x."""
    acc = _accumulate_dtype(x.dtype)
    return (x.to(acc) * grad_logits.to(acc)).sum(dim=(0, 2, 3))


# The hyper function and the attention, forward and backward, on the small tensors.

def _hyper(context: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
           fc2_bias: Tensor, s: DyReLUSettings):
    """(a, b) as the passes take them (N, G, K): with alpha, beta added except in mode
    "residual"; and the hidden activations and sigmoid output that backward needs."""
    hidden = torch.relu(F.linear(context, fc1_weight, fc1_bias))
    sig = torch.sigmoid(F.linear(hidden, fc2_weight, fc2_bias))
    theta = (2.0 * sig - 1.0).view(sig.shape[0], -1, 2, s.k)
    a, b = theta[:, :, 0] * s.lambda_a, theta[:, :, 1] * s.lambda_b
    if s.spatial != "residual":
        a = torch.cat([a[:, :, :1] + 1.0, a[:, :, 1:]], dim=2)  # alpha = (1, 0, ...), beta = 0
    return a, b, hidden, sig


def _hyper_backward(grad_a: Tensor, grad_b: Tensor, context: Tensor, hidden: Tensor,
                    sig: Tensor, fc1_weight: Tensor, fc2_weight: Tensor, s: DyReLUSettings):
    """Gradients of the pooled context, fc1 (weight, bias) and fc2 (weight, bias)."""
    n = context.shape[0]
    grad_theta = torch.stack((grad_a * s.lambda_a, grad_b * s.lambda_b), dim=2).view(n, -1)
    grad_fc2 = grad_theta * (2.0 * sig * (1.0 - sig))  # through 2 * sigmoid - 1
    grad_fc1 = (grad_fc2 @ fc2_weight) * (hidden > 0)  # ReLU: no gradient at 0, as autograd
    return (grad_fc1 @ fc1_weight, grad_fc1.T @ context, grad_fc1.sum(0), grad_fc2.T @ hidden,
            grad_fc2.sum(0))


def _scaled_attention(softmax: Tensor, s: DyReLUSettings, h: int, w: int) -> Tensor:
    return (softmax * (s.gamma * h * w)).clamp(max=1.0).view(-1, 1, h, w)


def _attention_backward(grad_pi: Tensor, softmax: Tensor, s: DyReLUSettings):
    """Gradients of the bias-free logits (N, 1, H, W) and of the 1x1 conv's bias."""
    n, _, h, w = grad_pi.shape
    scale = s.gamma * h * w
    # clamp(max=1) passes the gradient where its input is at most 1, as autograd does.
    grad_softmax = grad_pi.view(n, h * w) * scale * (softmax * scale <= 1.0)
    grad_z = softmax * (grad_softmax - (grad_softmax * softmax).sum(1, keepdim=True))
    grad_logits = (grad_z / s.tau).view(n, 1, h, w)
    return grad_logits, grad_logits.sum().view(1)


def _forward(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
             fc2_bias: Tensor, spatial_weight: Optional[Tensor], spatial_bias: Optional[Tensor],
             s: DyReLUSettings):
    dtype = fc1_weight.dtype
    h, w = x.shape[2:]
    context, logits = context_pass(x, spatial_weight)
    context = context.to(dtype)
    a, b, _, _ = _hyper(context, fc1_weight, fc1_bias, fc2_weight, fc2_bias, s)
    pi = softmax = None
    if spatial_weight is not None:
        z = (logits.to(dtype) + spatial_bias).view(x.shape[0], h * w) / s.tau
        softmax = torch.softmax(z, dim=-1)
        pi = _scaled_attention(softmax, s, h, w)
    return output_pass(x, a, b, pi, s.spatial), context, softmax


class _Passes(NamedTuple):
    coeff_grad: Callable
    attention_grad: Callable
    input_grad: Callable
    spatial_weight_grad: Callable


_PLAIN_PASSES = _Passes(coeff_grad_pass, attention_grad_pass, input_grad_pass,
                        spatial_weight_grad_pass)


def _backward(grad: Tensor, x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor,
              fc2_weight: Tensor, fc2_bias: Tensor, spatial_weight: Optional[Tensor],
              context: Tensor, softmax: Optional[Tensor], s: DyReLUSettings, input_grad: bool,
              passes: _Passes = _PLAIN_PASSES):
    dtype = fc1_weight.dtype
    h, w = x.shape[2:]
    pi = None if spatial_weight is None else _scaled_attention(softmax, s, h, w)
    a, b, hidden, sig = _hyper(context, fc1_weight, fc1_bias, fc2_weight, fc2_bias, s)
    grad_a, grad_b = passes.coeff_grad(x, a, b, pi, s.spatial, grad)
    grad_context, *grad_fc = _hyper_backward(grad_a.to(dtype), grad_b.to(dtype), context,
                                             hidden, sig, fc1_weight, fc2_weight, s)
    grad_logits = grad_weight = grad_bias = grad_x = None
    if spatial_weight is not None:
        grad_pi = passes.attention_grad(x, a, b, pi, s.spatial, grad).to(dtype)
        grad_logits, grad_bias = _attention_backward(grad_pi, softmax, s)
        grad_weight = passes.spatial_weight_grad(x, grad_logits).to(spatial_weight.dtype)
    if input_grad:
        grad_x = passes.input_grad(x, a, b, pi, s.spatial, grad, grad_context, grad_logits,
                                   spatial_weight)
    return grad_x, *grad_fc, grad_weight, grad_bias


# One graph per variant, dtype and the sizes inductor specialises on (a batch or hidden width
# of 1, H*W on either side of a loop-choice threshold): a model with every variant under mixed
# precision can pass dynamo's default of 8 graphs, after which a function runs eagerly.
_RECOMPILE_LIMIT = 64


class _LazyCompiled:
    """``torch.compile(fn)``, made at the first call: making it imports inductor (about 2 s),
    which a process whose layers all take another backend should not pay."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.compiled = fn, None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            options = {"dynamic": True}
            if "recompile_limit" in inspect.signature(torch.compile).parameters:  # torch >= 2.6
                options["recompile_limit"] = _RECOMPILE_LIMIT
            self.compiled = torch.compile(self.fn, **options)
        return self.compiled(*args, **kwargs)


_compiled_forward = _LazyCompiled(_forward)
_compiled_backward = _LazyCompiled(_backward)
_separately_compiled_passes = _Passes(*map(_LazyCompiled, _PLAIN_PASSES))

# Graphs are kept per state they are called in (dynamo guards on grad mode and autocast):
# called without grad or autocast and with detached tensors, training, inference and gradient
# checks share one.
def _detached(*tensors: Optional[Tensor]):
    return [None if t is None else t.detach() for t in tensors]


def _like(x: Tensor, result: Tensor) -> Tensor:
    """``result`` laid out as ``torch.empty_like(x)`` lays it out."""
    if result.stride() == x.stride():
        return result
    return torch.empty_like(x, dtype=result.dtype).copy_(result)


def forward(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
            settings: DyReLUSettings):
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        weights = _detached(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                            None if spatial_weight is None else spatial_weight.view(-1),
                            spatial_bias)
        y, context, softmax = _compiled_forward(*weights, settings)
    return _like(x, y), context, context.new_empty(0) if softmax is None else softmax


def backward(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, context,
             softmax, settings: DyReLUSettings, input_grad: bool):
    if grad.stride() != x.stride():
        # e.g. the expanded gradient of y.sum(): laid out as x, it takes x's graph (dynamo
        # guards on strides) instead of compiling one for its layout.
        grad = torch.empty_like(x).copy_(grad)
    spatial = spatial_weight is not None
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        inputs = (*_detached(grad, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                             spatial_weight.view(-1) if spatial else None, context,
                             softmax if spatial else None), settings, input_grad)
        if settings.spatial == "residual":
            grads = _backward(*inputs, passes=_separately_compiled_passes)
        else:
            grads = _compiled_backward(*inputs)
    grad_x, *grad_fc, grad_sw, grad_sb = grads
    return [_like(x, grad_x) if input_grad else x.new_empty(0), *grad_fc,
            grad_sw.view(spatial_weight.shape) if spatial else x.new_empty(0),
            grad_sb.view(1) if spatial else x.new_empty(0)]
