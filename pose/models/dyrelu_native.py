"""The native CPU path of a DY-ReLU layer: pose/models/dyrelu_kernels.c, built on first use.

The compiled path (dyrelu_function's torch.compile'd passes) runs each pass over the whole
batch, so every pass reads x from memory again, and each call pays for dynamo's guards and
inductor's wrapper. DY-ReLU's work is all per sample (pooling, hyper function, attention and
their gradients), so the C kernels make every pass over one sample while it is in the core's
cache, and a layer's forward and backward are one call each; backward also sums the
parameters' gradients over the batch, so no small torch operation follows it.

It serves float32 and float64 tensors on the CPU with x in the default (N, C, H, W) layout;
everything else (CUDA, bfloat16 under autocast, channels_last) takes the compiled path.

The library is built with the system's C compiler (``CC``, else ``gcc`` or ``cc``), the
one inductor uses too, into ``$POSE_NATIVE_CACHE`` (default ``~/.cache/dyrelu-pose``), once
per source, compiler and CPU: the build is for this CPU's instruction set (-march=native), so
a home directory shared by different machines keeps one build each. A failed build warns once
and leaves the compiled path in use. ``POSE_DYRELU_NATIVE=0`` turns the native path off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch

Tensor = torch.Tensor
SOURCE = Path(__file__).with_name("dyrelu_kernels.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99")
VECTOR_MATH = ("-DPOSE_VECTOR_MATH", "-lmvec")
_C_TYPES = {torch.float32: "float", torch.float64: "double"}
_MODES = {"plain": 0, "coefficient": 1, "residual": 2}


# dyrelu_kernels.c's argument structs, packed in the C compiler's layout (struct's "@" mode
# aligns fields as C does). Built as ctypes.Structure objects instead, they took twice as
# long, which counts in a layer's fixed cost (README, Performance).
# Layer: n, c, hw, hidden, groups, k; the addresses of fc1_weight, fc1_bias, fc2_weight,
# fc2_bias, spatial_weight, spatial_bias, alpha, beta; lambda_a, lambda_b, tau, gamma; mode,
# threads.
_LAYER = struct.Struct("@6l8P4d2i")
# ParameterGrads: where backward writes the gradients of fc1_weight, fc1_bias, fc2_weight,
# fc2_bias, spatial_weight and spatial_bias.
_PARAMETER_GRADS = struct.Struct("@6P")


def enabled() -> bool:
    return os.environ.get("POSE_DYRELU_NATIVE", "1") != "0"


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dyrelu-pose"
    return Path(os.environ.get("POSE_NATIVE_CACHE", default))


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


def _build(c_type: str) -> Path:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join(
        [SOURCE.read_text(), compiler, version, " ".join(FLAGS + VECTOR_MATH), c_type,
         _cpu_signature()]
    ).encode()).hexdigest()[:16]
    target = _cache_dir() / f"dyrelu_kernels_{c_type}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes that start together (DDP,
    # a grid's workers) never load a half-written library.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        # With glibc's vector math library where it links (dyrelu_kernels.c, EXP), else without.
        for extra in (VECTOR_MATH, ()):
            result = subprocess.run([compiler, *FLAGS, f"-DREAL={c_type}", str(SOURCE), "-o",
                                     partial, "-lm", *extra], capture_output=True, text=True)
            if result.returncode == 0:
                break
        else:
            raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{result.stderr[-2000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.lru_cache(maxsize=None)
def library(dtype: torch.dtype) -> Optional[ctypes.CDLL]:
    """The kernels for ``dtype``, built if needed; None where they cannot be built."""
    try:
        lib = ctypes.CDLL(str(_build(_C_TYPES[dtype])))
    except Exception as error:  # no compiler, a read-only cache, ...
        warnings.warn(f"the native DY-ReLU kernels could not be built, using the compiled path "
                      f"(slower on the CPU): {type(error).__name__}: {error}")
        return None
    packed, pointer = ctypes.c_char_p, ctypes.c_void_p
    lib.dyrelu_forward.argtypes = [packed, *[pointer] * 4]
    lib.dyrelu_backward.argtypes = [packed, *[pointer] * 5, packed]
    lib.dyrelu_forward.restype = lib.dyrelu_backward.restype = ctypes.c_int
    return lib


def supports(x: Tensor, *tensors: Optional[Tensor]) -> bool:
    """Whether the native path takes this layer: x a float32/float64 CPU tensor in the
    contiguous (N, C, H, W) layout, the other tensors (weights, saved tensors) contiguous in
    x's dtype."""
    dtype = x.dtype
    if not (dtype in _C_TYPES and x.is_cpu and x.dim() == 4 and x.is_contiguous()
            and x.numel() > 0 and enabled()):
        return False
    for t in tensors:
        if t is not None and not (t.dtype == dtype and t.is_cpu and t.is_contiguous()):
            return False
    return library(dtype) is not None


def _pointer(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _layer(x: Tensor, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
           alpha, beta, groups, lambda_a, lambda_b, tau, gamma, mode) -> bytes:
    n, c, h, w = x.shape
    return _LAYER.pack(n, c, h * w, fc1_weight.shape[0], groups, alpha.numel(),
                       fc1_weight.data_ptr(), fc1_bias.data_ptr(), fc2_weight.data_ptr(),
                       fc2_bias.data_ptr(), _pointer(spatial_weight), _pointer(spatial_bias),
                       alpha.data_ptr(), beta.data_ptr(), lambda_a, lambda_b, tau, gamma,
                       _MODES[mode], torch.get_num_threads())


def _check(failed: int) -> None:
    if failed:
        raise MemoryError("the native DY-ReLU kernels could not allocate their work space")


def forward(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
            fc2_bias: Tensor, spatial_weight: Optional[Tensor], spatial_bias: Optional[Tensor],
            alpha: Tensor, beta: Tensor, groups: int, lambda_a: float, lambda_b: float,
            tau: float, gamma: float, mode: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """As dyrelu_function._forward_pass: (y, the pooled context, the softmax or None)."""
    n, c, h, w = x.shape
    layer = _layer(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, spatial_bias,
                   alpha, beta, groups, lambda_a, lambda_b, tau, gamma, mode)
    y, context = torch.empty_like(x), x.new_empty((n, c))
    softmax = None if spatial_weight is None else x.new_empty((n, h * w))
    _check(library(x.dtype).dyrelu_forward(layer, x.data_ptr(), y.data_ptr(), context.data_ptr(),
                                           _pointer(softmax)))
    return y, context, softmax


def backward(grad: Tensor, x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, fc2_weight: Tensor,
             fc2_bias: Tensor, spatial_weight: Optional[Tensor], alpha: Tensor, beta: Tensor,
             context: Tensor, softmax: Tensor, groups: int, lambda_a: float, lambda_b: float,
             tau: float, gamma: float, mode: str, input_grad: bool):
    """As dyrelu_function._backward_pass: the gradients of x (None unless ``input_grad``),
    fc1 and fc2 (weight, bias), and the spatial conv's weight and bias (None without one)."""
    spatial = spatial_weight is not None
    # The conv's bias only enters the softmax, whose saved output backward uses instead.
    layer = _layer(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, spatial_weight, None, alpha,
                   beta, groups, lambda_a, lambda_b, tau, gamma, mode)
    grad = grad.contiguous()
    grad_x = torch.empty_like(x) if input_grad else None
    grads = [torch.empty_like(w) for w in (fc1_weight, fc1_bias, fc2_weight, fc2_bias)]
    grads += [torch.empty_like(spatial_weight), x.new_empty(1)] if spatial else [None, None]
    _check(library(x.dtype).dyrelu_backward(
        layer, grad.data_ptr(), x.data_ptr(), context.data_ptr(),
        _pointer(softmax if spatial else None), _pointer(grad_x),
        _PARAMETER_GRADS.pack(*map(_pointer, grads))))
    return grad_x, *grads
