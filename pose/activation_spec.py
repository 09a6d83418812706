"""Activation specs: what the slot accepts, parsed and checked without building a model.

A spec is a name (``"relu"``, ``"dyrelu_b"``) or a mapping with a ``name`` and options
(``{"name": "dyrelu_c", "k": 3, "reduction": 8}``). The config, the grid and the reports check
specs here; ``pose.models.activations.make_activation`` builds modules from them. This module
imports no model code (and no torch), so anything may use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

DYRELU_BACKENDS = ("auto", "native", "compiled", "reference")


@dataclass(frozen=True)
class DyReLUOptions:
    """DY-ReLU's options and their defaults, the one place they are written: the slot's specs,
    ``pose.models.dyrelu.DyReLU``'s signature and its settings record take them from here."""
    k: int = 2  # linear pieces
    reduction: float = 13  # the hyper function's squeeze ratio R
    lambda_a: float = 1.0  # range of the slope residuals
    lambda_b: float = 0.5  # range of the intercept residuals
    tau: float = 10.0  # the spatial attention's softmax temperature (C)
    gamma: float = 1.0 / 3.0  # the attention's scale as a fraction of H*W (C)
    spatial: str = "coefficient"  # C: the attention scales the coefficients, or residuals
    init: str = "default"  # or "relu": the hyper function's last layer starts at zero
    backend: str = "auto"


DYRELU_DEFAULTS: dict[str, Any] = dataclasses.asdict(DyReLUOptions())
# The values a text option may take (an option whose default is a number is checked for its
# type only; ranges are the modules' to check).
CHOICES = {"spatial": ("coefficient", "residual"), "init": ("default", "relu"),
           "backend": DYRELU_BACKENDS, "depthwise": ("relu", "maxout")}

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


class ActivationSpec(NamedTuple):
    """A checked spec: its name and the options it sets (the defaults stay in OPTIONS). A
    model parses its spec once into this record and hands the record to every block."""
    name: str
    options: dict[str, Any]


def parse_activation(spec: str | Mapping[str, Any] | ActivationSpec) -> ActivationSpec:
    """Split a spec into (name, options), checking both and every option's type; raises
    ValueError naming the fault. A record already parsed is returned as it is."""
    if isinstance(spec, ActivationSpec):
        return spec
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
    for key, value in options.items():
        _check_option(name, key, value, allowed[key])
    return ActivationSpec(name, options)


def _check_option(name: str, key: str, value: Any, default: Any) -> None:
    """An option's value must have its default's type (an int where a float is expected is
    fine); a text option must be one of its CHOICES."""
    where = f"option {key!r} of activation {name!r}"
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        choices = CHOICES.get(key)
        ok = isinstance(value, str) and (choices is None or value in choices)
        kind = f"one of {', '.join(choices)}" if choices else "a text"
    if not ok:
        raise ValueError(f"{where} must be {kind}, got {value!r}")


def activation_name(spec: str | Mapping[str, Any]) -> str:
    return parse_activation(spec)[0]


def resolved_activation(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every option its module will use, defaults included."""
    name, options = parse_activation(spec)
    return {"name": name, **OPTIONS[name], **options}
