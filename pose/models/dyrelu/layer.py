"""The DY-ReLU module: its parameters, its settings record and the choice of backend."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from pose.activation_spec import DyReLUOptions
from pose.models.dyrelu import ops, reference
from pose.models.dyrelu.settings import DyReLUSettings

_DEFAULT = DyReLUOptions()  # the options' defaults, written once in pose.activation_spec

_plain_operators = False
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.5


@contextlib.contextmanager
def plain_operators():
    """Run DY-ReLU layers as the reference's plain operators while inside: what operator
    counters (torch.utils.flop_counter, pose.complexity) must see, since the fast backends'
    arithmetic is invisible to them."""
    global _plain_operators
    previous, _plain_operators = _plain_operators, True
    try:
        yield
    finally:
        _plain_operators = previous


def _tracing() -> bool:
    """Exporters and operator counters get the reference. torch.export (and the ONNX
    exporter built on it) sets is_exporting; the TorchScript ONNX exporter and jit.trace set
    is_tracing (torch 2.4 has no is_exporting: there torch.export keeps the operator)."""
    return _plain_operators or _is_exporting() or torch.jit.is_tracing()


class DyReLU(nn.Module):
    """Dynamic ReLU, variants A (shared), B (channel-wise) and C (channel- and spatial-wise);
    the formula is in ``pose/models/dyrelu/reference.py``.

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
        backend: ``"auto"``, ``"native"``, ``"compiled"`` or ``"reference"``
            (pose/models/dyrelu/ops.py); ``auto`` is resolved at the first call for each
            device and dtype.
    """

    def __init__(self, channels: int, variant: str = "b", k: int = _DEFAULT.k,
                 reduction: float = _DEFAULT.reduction, lambda_a: float = _DEFAULT.lambda_a,
                 lambda_b: float = _DEFAULT.lambda_b, tau: float = _DEFAULT.tau,
                 gamma: float = _DEFAULT.gamma, spatial: str = _DEFAULT.spatial,
                 init: str = _DEFAULT.init, backend: str = _DEFAULT.backend) -> None:
        super().__init__()
        if variant not in ("a", "b", "c"):
            raise ValueError(f"DyReLU variant must be 'a', 'b' or 'c', got {variant!r}")
        if reduction <= 0:
            raise ValueError(f"DyReLU reduction must be > 0, got {reduction}")
        if spatial not in ("coefficient", "residual"):
            raise ValueError(f"DyReLU spatial must be 'coefficient' or 'residual', got {spatial!r}")
        if init not in ("default", "relu"):
            raise ValueError(f"DyReLU init must be 'default' or 'relu', got {init!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"DyReLU backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.settings = DyReLUSettings(
            k=k, channelwise=variant != "a", spatial=spatial if variant == "c" else "plain",
            lambda_a=lambda_a, lambda_b=lambda_b, tau=tau, gamma=gamma)
        self.channels, self.variant, self.spatial = channels, variant, spatial
        self.backend = backend
        self._backends: dict[tuple, str] = {}  # (device, dtype, parameter dtype) -> backend
        self._routes: dict[tuple, Callable] = {}  # the same and whether tracing -> function
        self.groups = channels if self.settings.channelwise else 1
        hidden = max(int(channels // reduction), 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, self.groups * 2 * k)
        # Variant C's 1x1 conv; None otherwise (registered, so reading it raises nothing).
        self.register_module("spatial_conv",
                             nn.Conv2d(channels, 1, kernel_size=1) if variant == "c" else None)
        if init == "relu":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def _weights(self):
        fc1, fc2, conv = self.fc1, self.fc2, self.spatial_conv
        return (fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                None if conv is None else conv.weight, None if conv is None else conv.bias)

    def coefficients(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual slopes and intercepts (da, db), each (N, groups, K), from the pooled
        context (N, C)."""
        return reference.residuals(context, *self._weights()[:4], self.settings)

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """Spatial attention pi (N, 1, H, W), each value in (0, 1], from the 1x1 conv's
        output without its bias (variant C)."""
        return reference.attention(logits, self.spatial_conv.bias, self.settings)

    def _route(self, key: tuple) -> Callable[..., torch.Tensor]:
        """The function that runs this layer for inputs keyed as in ``forward``, made at the
        first call for each key: the reference while tracing, else the backend resolved for
        the device and dtypes."""
        if key[-1]:  # tracing: exporters trace the reference, and nothing is resolved
            return ops.route("reference", self.settings)
        return self._resolved_route(key)

    @torch.compiler.disable  # resolving builds kernels and compiles: none of it is traced
    def _resolved_route(self, key: tuple) -> Callable[..., torch.Tensor]:
        device, dtype, weight_dtype, _ = key
        backend = ops.resolve(self.backend, device, dtype, weight_dtype)
        self._backends[(device, dtype, weight_dtype)] = backend
        self._routes[key] = ops.route(backend, self.settings)
        return self._routes[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype, self.fc1.weight.dtype, _tracing())
        route = self._routes.get(key) or self._route(key)
        return route(x, *self._weights())

    def __getstate__(self) -> dict:
        # Routes are functions made at run time, which pickle cannot save: a copy (pickled,
        # deep-copied) makes its own at its first call.
        return {**self.__dict__, "_routes": {}}

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, variant={self.variant}, k={self.settings.k}, "
                f"backend={self.backend}")
