"""ONNX export of the pose model (person crop -> heatmaps), checked with ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pose.errors import PoseError


def export(model: torch.nn.Module, input_size, out: Path, opset: int = 17) -> float:
    """Write ``model`` to ``out``; returns the max abs difference ONNX Runtime vs PyTorch."""
    try:
        import onnxruntime
    except ImportError:
        raise PoseError("onnxruntime is not installed: pip install -e '.[export]'") from None
    height, width = input_size
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        # The TorchScript exporter: no onnxscript needed; the batch dimension stays dynamic.
        torch.onnx.export(model, (example,), str(out), input_names=["image"],
                          output_names=["heatmaps"], opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}})
        expected = model(example).numpy()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"image": example.numpy()})
    return float(np.abs(actual - expected).max())
