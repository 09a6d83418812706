"""The activation slot: one factory for every non-linearity a model may use, DY-ReLU included.

``make_activation(spec, channels, position)`` turns a spec (pose.activation_spec) into a
module that gives ``channels`` channels. Static activations ignore ``channels``; DY-ReLU, SE,
and channel-wise PReLU need it, and the factory hides that difference.

Some activations take more channels than they give: Maxout takes the maximum of K pieces.
``pieces(spec, position)`` says how many channels per output channel the layer in front must
produce; blocks ask it wherever they build a conv before an activation (``conv_norm_act``)
and at the linear projection of an inverted residual. ``position`` is ``"conv"`` (a dense
conv: stem, expansion, final and head convs), ``"depthwise"`` or ``"projection"``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from pose.activation_spec import (ACTIVATIONS, activation_name, parse_activation,
                                  resolved_activation)
from pose.models.dyrelu import DyReLU


def _dyrelu(variant: str) -> Callable[..., nn.Module]:
    def build(channels: int, **options: Any) -> nn.Module:
        return DyReLU(channels, variant=variant, **options)

    return build


POSITIONS = ("conv", "depthwise", "projection")


class Maxout(nn.Module):
    """(N, K*C, H, W) -> (N, C, H, W): output channel c is the maximum of input channels
    cK .. cK + K - 1, so a depthwise conv with K filters per channel (groups = C) feeds each
    unit the K filters of one channel."""

    def __init__(self, k: int) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"maxout k must be >= 1, got {k}")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, self.k)).amax(2) if self.k > 1 else x

    def extra_repr(self) -> str:
        return f"k={self.k}"


def _se_relu(channels: int, reduction: float = 13) -> nn.Module:
    if reduction <= 0:
        raise ValueError(f"se_relu reduction must be > 0, got {reduction}")
    return nn.Sequential(nn.ReLU(inplace=True),
                         SqueezeExcitation(channels, max(int(channels // reduction), 1)))


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "relu": lambda c: nn.ReLU(inplace=True),
    "relu6": lambda c: nn.ReLU6(inplace=True),
    "leaky_relu": lambda c, negative_slope=0.01: nn.LeakyReLU(negative_slope, inplace=True),
    "prelu": lambda c, init=0.25: nn.PReLU(c, init),
    "prelu_shared": lambda c, init=0.25: nn.PReLU(1, init),
    "rrelu": lambda c, lower=1 / 8, upper=1 / 3: nn.RReLU(lower, upper),
    "se_relu": _se_relu,
    "dyrelu_a": _dyrelu("a"),
    "dyrelu_b": _dyrelu("b"),
    "dyrelu_c": _dyrelu("c"),
}
assert set(_BUILDERS) | {"maxout"} == set(ACTIVATIONS)  # Maxout: make_activation


def pieces(spec: str | Mapping[str, Any], position: str = "conv") -> int:
    """Channels the layer in front of this activation at ``position`` produces per output
    channel: K for Maxout where it applies, 1 otherwise (projections stay linear then)."""
    if position not in POSITIONS:
        raise ValueError(f"activation position must be one of {POSITIONS}, got {position!r}")
    options = resolved_activation(spec)
    if options["name"] != "maxout":
        return 1
    if options["k"] < 1:
        raise ValueError(f"maxout k must be >= 1, got {options['k']}")
    skipped = ((position == "depthwise" and options["depthwise"] == "relu")
               or (position == "projection" and not options["projection"]))
    return 1 if skipped else options["k"]


def make_activation(spec: str | Mapping[str, Any], channels: int,
                    position: str = "conv") -> nn.Module:
    """Build the activation described by ``spec`` that gives ``channels`` channels at
    ``position``; it takes ``pieces(spec, position) * channels``."""
    count = pieces(spec, position)  # checks the position (and Maxout's options)
    name, options = parse_activation(spec)
    if name != "maxout":
        return _BUILDERS[name](channels, **options)
    if position == "depthwise" and resolved_activation(spec)["depthwise"] == "relu":
        return nn.ReLU(inplace=True)
    return Maxout(count)


__all__ = ["ACTIVATIONS", "DyReLU", "Maxout", "activation_name", "make_activation",
           "parse_activation", "pieces", "resolved_activation"]
