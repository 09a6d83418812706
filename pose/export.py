"""ONNX export of the pose model (person crop -> heatmaps), checked with ONNX Runtime.

The default exporter is PyTorch's current one (``torch.onnx.export(..., dynamo=True)``: it
captures the model with ``torch.export``, where DY-ReLU layers trace their reference formula,
and needs ``onnxscript``). It takes much longer than the TorchScript-based exporter (about
1.5 minutes against 5 s for a DY-ReLU-C model on 2 CPU cores), which PyTorch deprecates; that
one stays available as ``exporter="torchscript"``. Both keep the batch dimension dynamic, and
the check runs ONNX Runtime on a batch of another size than the one exported with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pose.errors import PoseError

EXPORTERS = ("dynamo", "torchscript")


def _example(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def export(model: torch.nn.Module, input_size, out: Path, opset: Optional[int] = None,
           exporter: str = "dynamo") -> float:
    """Write ``model`` to ``out``; returns the max abs difference ONNX Runtime vs PyTorch."""
    if exporter not in EXPORTERS:
        raise PoseError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    try:
        import onnxruntime
    except ImportError:
        raise PoseError("onnxruntime is not installed: pip install -e '.[export]'") from None
    height, width = input_size
    example = _example(2, height, width, seed=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    names = dict(input_names=["image"], output_names=["heatmaps"])
    with torch.no_grad():
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401  (the exporter's dependency)
            except ImportError:
                raise PoseError("onnxscript is not installed: pip install -e '.[export]'") \
                    from None
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
            program.save(str(out))
        else:
            torch.onnx.export(model, (example,), str(out), opset_version=opset or 17,
                              dynamo=False, **names,
                              dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}})
        check = _example(3, height, width, seed=1)  # another batch size than exported with
        expected = model(check).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"image": check.numpy()})
    return float(np.abs(actual - expected).max())
