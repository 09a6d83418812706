"""Activation specs: what the slot accepts, parsed and checked without building a model.

A spec is a name (``"relu"``, ``"dyrelu_b"``) or a mapping with a ``name`` and options
(``{"name": "dyrelu_c", "k": 3, "reduction": 8}``). The config, the grid and the reports check
specs here; ``pose.models.activations.make_activation`` builds modules from them. This module
imports no model code (and no torch), so anything may use it.
"""
from __future__ import annotations

from typing import Any, Mapping

# The defaults of pose.models.dyrelu.DyReLU's options (a test keeps the two equal).
DYRELU_DEFAULTS: dict[str, Any] = {
    "k": 2, "reduction": 13, "lambda_a": 1.0, "lambda_b": 0.5, "tau": 10.0,
    "gamma": 1.0 / 3.0, "spatial": "coefficient", "init": "default", "backend": "auto",
}

# name -> its options with their defaults
OPTIONS: dict[str, dict[str, Any]] = {
    "relu": {},
    "relu6": {},
    "leaky_relu": {"negative_slope": 0.01},
    "prelu": {"init": 0.25},
    "prelu_shared": {"init": 0.25},
    "rrelu": {"lower": 1 / 8, "upper": 1 / 3},
    # ReLU followed by a squeeze-and-excitation gate, hidden width max(C // reduction, 1).
    "se_relu": {"reduction": 13},
    # The maximum of K pieces; the layer in front produces K channels per output channel.
    # depthwise: "relu" (depthwise convs keep a ReLU) or "maxout" (K filters per channel);
    # projection: the blocks' linear projections become maxout units too. The defaults are
    # the reading that reproduces the paper's Table 1 counts (README, "Complexity").
    "maxout": {"k": 2, "depthwise": "relu", "projection": True},
    "dyrelu_a": DYRELU_DEFAULTS,
    "dyrelu_b": DYRELU_DEFAULTS,
    "dyrelu_c": DYRELU_DEFAULTS,
}
ACTIVATIONS = tuple(OPTIONS)


def parse_activation(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a spec into (name, options), checking both; raises ValueError naming the fault."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"activation spec {dict(spec)!r} has no 'name' key")
        options = {key: value for key, value in spec.items() if key != "name"}
        name = spec["name"]
    else:
        raise ValueError(f"activation spec must be a name or a mapping, got {spec!r}")
    if name not in OPTIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
    allowed = OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for activation {name!r}; "
                         f"valid options: {valid}")
    return name, options


def activation_name(spec: str | Mapping[str, Any]) -> str:
    return parse_activation(spec)[0]


def resolved_activation(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every option its module will use, defaults included."""
    name, options = parse_activation(spec)
    return {"name": name, **OPTIONS[name], **options}
