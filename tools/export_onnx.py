"""Export the pose model (person crop -> heatmaps) to ONNX and check it with onnxruntime.

    python tools/export_onnx.py --config CONFIG --checkpoint best.pth --out model.onnx

Needs the `export` extra: pip install -e '.[export]'.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pose.cli import add_config_arguments, config_from_args, run
from pose.data.keypoints import COCO_KEYPOINTS
from pose.export import EXPORTERS, export, keypoint_difference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", help="weights to export (default: a fresh model)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="dynamo: torch.onnx.export(dynamo=True), the current exporter; "
                             "torchscript: the deprecated one, much faster (pose/export.py)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    keypoint_set = COCO_KEYPOINTS
    if args.checkpoint:
        from pose.checkpoint import load_checkpoint
        from pose.estimator import checkpoint_keypoint_set, model_from_checkpoint

        state = load_checkpoint(args.checkpoint)
        keypoint_set = checkpoint_keypoint_set(state, cfg)
        model = model_from_checkpoint(cfg, args.checkpoint, torch.device("cpu"), state)
    else:
        from pose.models import build_model

        model = build_model(cfg.model)
    difference = export(model, cfg.data.input_size, Path(args.out), args.opset, args.exporter)
    print(f"wrote {args.out}; max abs difference ONNX Runtime vs PyTorch: {difference:.2e}")
    pixels = keypoint_difference(model, Path(args.out), cfg, keypoint_set)
    print(f"keypoints through the evaluation's path (pose.estimator), ONNX Runtime vs "
          f"PyTorch: max difference {pixels:.3f} px")
    return 0


if __name__ == "__main__":
    run(main)
