"""Evaluate a checkpoint on the validation set with COCO keypoint AP.

    python tools/test.py --config CONFIG --checkpoint work_dirs/x/best.pth [--gt-boxes |
        --det-file F] [--no-flip] [--work-dir DIR]
    python tools/test.py --config CONFIG --oracle     # codec upper bound: targets as output
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pose.cli import add_config_arguments, config_from_args, run
from pose.engine.runner import run_test


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a .pth from tools/train.py (or a state dict)")
    source.add_argument("--oracle", action="store_true",
                        help="score the encoded target heatmaps (GT boxes): the codec's bound")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--gt-boxes", action="store_true", help="ground-truth person boxes")
    boxes.add_argument("--det-file", help="detector results file (default: data.det_file)")
    parser.add_argument("--no-flip", action="store_true", help="turn flip test off")
    parser.add_argument("--work-dir", help="where results.json and metrics.json go "
                        "(default: CHECKPOINT_FOLDER/test, or work_dirs/oracle)")
    args = parser.parse_args(argv)
    if args.no_flip:
        args.overrides.append("eval.flip_test=false")
    cfg = config_from_args(args)
    default = Path(args.checkpoint).parent / "test" if args.checkpoint else Path("work_dirs/oracle")
    run_test(cfg, Path(args.work_dir) if args.work_dir else default, checkpoint=args.checkpoint,
             oracle=args.oracle, use_gt_boxes=True if args.gt_boxes else None,
             det_file=args.det_file)
    return 0


if __name__ == "__main__":
    run(main)
