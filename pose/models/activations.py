"""The activation slot: one factory for every non-linearity a model may use, DY-ReLU included.

``make_activation(spec, channels)`` turns a spec (pose.activation_spec) into a module for
``channels`` channels. Static activations ignore ``channels``; DY-ReLU and channel-wise PReLU
need it, and the factory hides that difference.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from pose.activation_spec import (ACTIVATIONS, activation_name, parse_activation,
                                  resolved_activation)
from pose.models.dyrelu import DyReLU


def _dyrelu(variant: str) -> Callable[..., nn.Module]:
    def build(channels: int, **options: Any) -> nn.Module:
        return DyReLU(channels, variant=variant, **options)

    return build


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "relu": lambda c: nn.ReLU(inplace=True),
    "relu6": lambda c: nn.ReLU6(inplace=True),
    "leaky_relu": lambda c, negative_slope=0.01: nn.LeakyReLU(negative_slope, inplace=True),
    "prelu": lambda c, init=0.25: nn.PReLU(c, init),
    "prelu_shared": lambda c, init=0.25: nn.PReLU(1, init),
    "rrelu": lambda c, lower=1 / 8, upper=1 / 3: nn.RReLU(lower, upper),
    "dyrelu_a": _dyrelu("a"),
    "dyrelu_b": _dyrelu("b"),
    "dyrelu_c": _dyrelu("c"),
}
assert set(_BUILDERS) == set(ACTIVATIONS)


def make_activation(spec: str | Mapping[str, Any], channels: int) -> nn.Module:
    """Build the activation described by ``spec`` for a tensor with ``channels`` channels."""
    name, options = parse_activation(spec)
    return _BUILDERS[name](channels, **options)


__all__ = ["ACTIVATIONS", "DyReLU", "activation_name", "make_activation", "parse_activation",
           "resolved_activation"]
