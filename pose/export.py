"""ONNX export of the pose model (person crop -> heatmaps), checked with ONNX Runtime.

The default exporter is PyTorch's current one (``torch.onnx.export(..., dynamo=True)``: it
captures the model with ``torch.export``, where DY-ReLU layers trace their reference formula,
and needs ``onnxscript``). It takes much longer than the TorchScript-based exporter (about
1.5 minutes against 5 s for a DY-ReLU-C model on 2 CPU cores), which PyTorch deprecates; that
one stays available as ``exporter="torchscript"``. Both keep the batch dimension dynamic, and
the check runs ONNX Runtime on a batch of another size than the one exported with.

:func:`keypoint_difference` then runs the ONNX model and the PyTorch model through the
evaluation's own inference path (``pose.estimator.PoseEstimator``: crop, flip test, decoding,
rescoring, OKS-NMS) on the same person boxes, so what is compared is what a user gets.
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


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX Runtime session as a module (crops -> heatmaps), so that it runs through the
    same ``PoseEstimator`` as the PyTorch model."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (heatmaps,) = self.session.run(None, {"image": images.cpu().numpy()})
        return torch.from_numpy(heatmaps)


def keypoint_difference(model: torch.nn.Module, onnx_path: Path, cfg, keypoint_set,
                        seed: int = 0) -> float:
    """Max distance in image pixels between the keypoints PyTorch and ONNX Runtime give for
    the same people (three boxes on a random image), both through ``PoseEstimator``."""
    from pose.estimator import PoseEstimator

    height, width = cfg.data.input_size
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (2 * height, 2 * width, 3), dtype=np.uint8)
    boxes = [([0, 0, 2 * width, 2 * height], 1.0), ([width / 2, height / 4, width, height], 0.9),
             ([width, height, width * 0.8, height * 0.9], 0.8)]
    device = torch.device("cpu")
    estimators = [PoseEstimator.from_model(m, cfg, device, keypoint_set)
                  for m in (model.to(device), OnnxRuntimeModel(onnx_path))]
    worst = 0.0
    # One box at a time: people come back sorted by score, and OKS-NMS keeps or drops a person
    # by thresholds, so with several boxes a 1e-6 difference in a score could pair different
    # people or keep a different number of them.
    for box in boxes:
        ours, theirs = ([p["keypoints"] for p in estimate(image, [box])] for estimate in estimators)
        if len(ours) != len(theirs):
            return float("inf")
        for a, b in zip(ours, theirs):
            a, b = np.reshape(a, (-1, 3)), np.reshape(b, (-1, 3))
            worst = max(worst, float(np.abs(a[:, :2] - b[:, :2]).max()))
    return worst
