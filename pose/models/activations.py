"""The activation slot: one factory for every non-linearity a model may use, DY-ReLU included.

``make_activation(spec, channels)`` turns a spec into a module for ``channels`` channels.
A spec is a name (``"relu"``, ``"dyrelu_b"``) or a mapping with a ``name`` and options
(``{"name": "dyrelu_c", "k": 3, "reduction": 8}``). Static activations ignore ``channels``;
DY-ReLU and channel-wise PReLU need it, and the factory hides that difference.

DY-ReLU (Chen et al., ECCV 2020), for x of shape (N, C, H, W):

    y_c = max_k ( a_c^k(x) * x_c + b_c^k(x) )
    a_c^k = alpha^k + lambda_a * da_c^k(x),   b_c^k = beta^k + lambda_b * db_c^k(x)

with the residuals (da, db) = 2 * sigmoid(FC(ReLU(FC(avgpool(x))))) - 1 in [-1, 1].
The hyper function's output of M values is laid out as (groups, 2, K): for each group
(1 for variant A, C for B and C) first the K slope residuals, then the K intercept residuals.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from pose.models import dyrelu_function


class DyReLU(nn.Module):
    """Dynamic ReLU, variants A (shared), B (channel-wise) and C (channel- and spatial-wise).

    Args:
        channels: C, the number of input channels.
        variant: ``"a"``, ``"b"`` or ``"c"``.
        k: number of linear pieces K.
        reduction: R, the hyper function's squeeze ratio (hidden width = max(C // R, 1)).
            The default 13 reproduces the paper's MobileNetV2 DY-ReLU-B counts (README,
            'Complexity'); public implementations use 4.
        lambda_a, lambda_b: residual ranges of the slopes and intercepts.
        tau: softmax temperature of the spatial attention (variant C).
        gamma: spatial attention scale as a fraction of H*W (variant C); gamma = 1/3 gives
            the paper's H*W/3.
        spatial: variant C only. ``"coefficient"`` (the paper's formula) multiplies the whole
            coefficients a^k, b^k by the attention pi; ``"residual"`` multiplies only the
            residuals, so pi leaves the static ReLU part untouched.
        init: ``"default"`` (PyTorch's initialisation) or ``"relu"``: the hyper function's last
            layer starts at zero, so the residuals are zero and the module starts as ReLU
            (for variant C with ``spatial="coefficient"``: as pi * ReLU, pi = min(gamma, 1)
            while the attention is uniform).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "b",
        k: int = 2,
        reduction: float = 13,
        lambda_a: float = 1.0,
        lambda_b: float = 0.5,
        tau: float = 10.0,
        gamma: float = 1.0 / 3.0,
        spatial: str = "coefficient",
        init: str = "default",
    ) -> None:
        super().__init__()
        if variant not in ("a", "b", "c"):
            raise ValueError(f"DyReLU variant must be 'a', 'b' or 'c', got {variant!r}")
        if k < 1:
            raise ValueError(f"DyReLU k must be >= 1, got {k}")
        if reduction <= 0:
            raise ValueError(f"DyReLU reduction must be > 0, got {reduction}")
        if spatial not in ("coefficient", "residual"):
            raise ValueError(f"DyReLU spatial must be 'coefficient' or 'residual', got {spatial!r}")
        if init not in ("default", "relu"):
            raise ValueError(f"DyReLU init must be 'default' or 'relu', got {init!r}")
        self.channels, self.variant, self.k = channels, variant, k
        self.lambda_a, self.lambda_b = lambda_a, lambda_b
        self.tau, self.gamma, self.spatial = tau, gamma, spatial
        self.groups = 1 if variant == "a" else channels
        hidden = max(int(channels // reduction), 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, self.groups * 2 * k)
        if variant == "c":
            self.spatial_conv = nn.Conv2d(channels, 1, kernel_size=1)
        # alpha^1 = 1, alpha^k = 0 otherwise, beta = 0: zero residuals give exactly ReLU.
        alpha = torch.zeros(k)
        alpha[0] = 1.0
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("beta", torch.zeros(k), persistent=False)
        if init == "relu":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def coefficients(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual slopes and intercepts (da, db), each (N, groups, K), from the pooled
        context (N, C)."""
        return dyrelu_function.coefficients(
            context, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
            self.groups, self.k, self.lambda_a, self.lambda_b)[:2]

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """Spatial attention pi (N, 1, H, W), each value in (0, 1], from the spatial conv's
        output without its bias (variant C)."""
        return dyrelu_function.attention(logits, self.spatial_conv.bias, self.tau, self.gamma)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hyper = (self.fc1, self.fc2, self.alpha, self.beta, self.groups, self.lambda_a,
                 self.lambda_b)
        if self.variant != "c":
            return dyrelu_function.dyrelu(x, *hyper)
        return dyrelu_function.dyrelu(x, *hyper, self.spatial, self.spatial_conv, self.tau,
                                      self.gamma)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant}, k={self.k}"


def _dyrelu(variant: str):
    def build(channels: int, **options: Any) -> nn.Module:
        return DyReLU(channels, variant=variant, **options)

    return build


# name -> (builder(channels, **options), allowed option names)
_DYRELU_OPTIONS = ("k", "reduction", "lambda_a", "lambda_b", "tau", "gamma", "spatial", "init")
_REGISTRY: dict[str, tuple[Any, tuple[str, ...]]] = {
    "relu": (lambda c: nn.ReLU(inplace=True), ()),
    "relu6": (lambda c: nn.ReLU6(inplace=True), ()),
    "leaky_relu": (lambda c, negative_slope=0.01: nn.LeakyReLU(negative_slope, inplace=True),
                   ("negative_slope",)),
    "prelu": (lambda c, init=0.25: nn.PReLU(c, init), ("init",)),
    "prelu_shared": (lambda c, init=0.25: nn.PReLU(1, init), ("init",)),
    "rrelu": (lambda c, lower=1 / 8, upper=1 / 3: nn.RReLU(lower, upper), ("lower", "upper")),
    "dyrelu_a": (_dyrelu("a"), _DYRELU_OPTIONS),
    "dyrelu_b": (_dyrelu("b"), _DYRELU_OPTIONS),
    "dyrelu_c": (_dyrelu("c"), _DYRELU_OPTIONS),
}
ACTIVATIONS = tuple(_REGISTRY)


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
    if name not in _REGISTRY:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
    allowed = _REGISTRY[name][1]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for activation {name!r}; "
                         f"valid options: {valid}")
    return name, options


def make_activation(spec: str | Mapping[str, Any], channels: int) -> nn.Module:
    """Build the activation described by ``spec`` for a tensor with ``channels`` channels."""
    name, options = parse_activation(spec)
    return _REGISTRY[name][0](channels, **options)


def activation_name(spec: str | Mapping[str, Any]) -> str:
    return parse_activation(spec)[0]


def resolved_activation(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every option its module will use, defaults included."""
    import inspect

    name, options = parse_activation(spec)
    builder = DyReLU.__init__ if name.startswith("dyrelu") else _REGISTRY[name][0]
    defaults = {p.name: p.default for p in inspect.signature(builder).parameters.values()
                if p.default is not inspect.Parameter.empty and p.name != "variant"}
    return {"name": name, **defaults, **options}
