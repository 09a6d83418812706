"""The native CPU backend: ``kernels.cpp``, built on first use with
``torch.utils.cpp_extension`` and registered as ``torch.ops.dyrelu_pose_native``.

PyTorch's extension machinery does the building: its build directory and cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), its file lock, so that
DDP ranks or a grid's workers that start together build once, its compiler detection and
ninja. The kernels are built for this CPU's instruction set (``-march=native`` on x86-64), so
the extension's name carries a hash of the CPU's feature flags: a home directory shared by
different machines keeps one build each.

It serves float32 and float64 on the CPU, as the operators ``dyrelu_pose_native::forward``
and ``backward`` with the contract ops.py states; ops.py chooses it where it applies.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import platform
from pathlib import Path
from typing import Optional

import torch

from pose.models.dyrelu.settings import DyReLUSettings

SOURCE = Path(__file__).with_name("kernels.cpp")
DTYPES = (torch.float32, torch.float64)


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


def _flags(vector_math: bool) -> tuple[list[str], list[str]]:
    cflags = ["-O3"]
    # OpenMP: ATen's parallel_for is a header template that needs it; elsewhere (Apple's
    # clang) the simd pragmas alone, and one thread.
    cflags.append("-fopenmp" if platform.system() == "Linux" else "-fopenmp-simd")
    if platform.machine() in ("x86_64", "AMD64"):
        cflags.append("-march=native")
    if not vector_math:
        return cflags, ["-fopenmp"] if "-fopenmp" in cflags else []
    # glibc's vector math library: vectorised exp in the softmax and sigmoid loops.
    return cflags + ["-DPOSE_VECTOR_MATH"], ["-fopenmp", "-lmvec"]


_loaded: list[str] = []  # the extension's name, once loaded


# cpp_extension (imported here and by inductor) logs at import that no CUDA runtime is found
# on a machine without a GPU: nothing to do with a CPU run, and the first line a user sees.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _load(vector_math: bool) -> None:
    from torch.utils import cpp_extension

    cflags, ldflags = _flags(vector_math)
    key = hashlib.sha256(f"{_cpu_signature()} {cflags} {ldflags}".encode()).hexdigest()[:12]
    name = f"dyrelu_pose_native_{key}"
    cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=cflags,
                       extra_ldflags=ldflags, is_python_module=False, verbose=False)
    bind_fields(DyReLUSettings.field_names())
    _loaded.append(name)


def bind_fields(names: list[str]) -> None:
    """Tell the kernels which position of the settings list holds which field."""
    torch.ops.dyrelu_pose_native.bind_fields(list(names))


@functools.lru_cache(maxsize=None)
def build_error() -> Optional[str]:
    """Builds and loads the kernels once per process; None on success, else why not (the
    first line of the compiler's or loader's complaint)."""
    errors = []
    for vector_math in ((True, False) if platform.system() == "Linux" else (False,)):
        try:
            _load(vector_math)
            return None
        except Exception as error:  # no compiler, no ninja, a read-only cache, ...
            lines = [line for line in str(error).splitlines() if line.strip()]
            errors.append(f"{type(error).__name__}: {lines[0] if lines else ''}")
    return errors[-1]


def supports(x: torch.Tensor, weight_dtype: torch.dtype) -> bool:
    """Whether the kernels can take x with parameters of ``weight_dtype`` (in any layout)."""
    return x.device.type == "cpu" and x.dtype in DTYPES and weight_dtype == x.dtype
