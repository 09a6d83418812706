"""One record of a DY-ReLU layer's settings, built once per module and handed whole to every
backend (reference, compiled, native).

The record holds what the formula needs beyond the tensors; sizes (C, the hidden width, the
number of coefficient groups) come from the tensors' shapes, so one record serves layers of
every channel count and a compiled backend does not specialise on them.

The native kernels' operators take the record as a list of floats in field order
(``as_floats``), and the kernels read each field by name (native.py binds the names to their
positions once, ``field_names``). A new scalar option is a field here, a default in
``pose.activation_spec.DyReLUOptions``, an argument of ``DyReLU``, a name in kernels.cpp's
``DYRELU_SCALAR_SETTINGS``, and its uses in the three backends.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pose.activation_spec import DyReLUOptions

_DEFAULT = DyReLUOptions()

# How the spatial attention pi enters (variant C): "plain" has none (A, B). The layer's own
# option of the same name (``DyReLU(spatial=...)``) takes the other two.
SPATIAL_MODES = ("plain", "coefficient", "residual")


@dataclass(frozen=True)
class DyReLUSettings:
    """Args:
        k: K, the number of linear pieces.
        channelwise: coefficients per channel (B, C) or shared by all channels (A).
        spatial: ``"plain"`` (no attention), ``"coefficient"`` (y = pi * max_k(a_k x + b_k), the
            paper's C) or ``"residual"`` (y = max_k((alpha_k + pi da_k) x + beta_k + pi db_k)).
        lambda_a, lambda_b: ranges of the slope and intercept residuals.
        tau: softmax temperature of the spatial attention.
        gamma: the attention's scale as a fraction of H*W (pi = min(gamma HW softmax, 1)).
    """

    k: int = _DEFAULT.k
    channelwise: bool = True
    spatial: str = "plain"
    lambda_a: float = _DEFAULT.lambda_a
    lambda_b: float = _DEFAULT.lambda_b
    tau: float = _DEFAULT.tau
    gamma: float = _DEFAULT.gamma

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"DyReLU k must be >= 1, got {self.k}")
        if self.spatial not in SPATIAL_MODES:
            raise ValueError(f"DyReLU spatial must be one of {SPATIAL_MODES}, "
                             f"got {self.spatial!r}")
        if self.tau <= 0:
            raise ValueError(f"DyReLU tau must be > 0, got {self.tau}")

    @property
    def has_attention(self) -> bool:
        """Whether the layer has the 1x1 spatial conv and attention (variant C)."""
        return self.spatial != "plain"

    def as_floats(self) -> list[float]:
        """The fields in order, as the native kernels' operators take them."""
        return [float(SPATIAL_MODES.index(v) if f.name == "spatial" else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]
