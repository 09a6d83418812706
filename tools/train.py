"""Train (and evaluate) a pose model from a config.

    python tools/train.py --config configs/synthetic/mobilenetv2_x0.5_160x128.yaml
    torchrun --nproc_per_node=8 tools/train.py --config configs/coco/mobilenetv2_x0.5_256x192.yaml \
        --set model.backbone.act=dyrelu_c --set model.head.act=dyrelu_c --set train.amp=bf16
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pose.cli import add_config_arguments, config_from_args, run
from pose.engine.runner import run_training


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--work-dir", help="run folder (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from WORK_DIR/latest.pth (a finished run is left alone)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    work_dir = Path(args.work_dir or Path("work_dirs") / Path(args.config).stem)
    run_training(cfg, work_dir, resume=args.resume)
    return 0


if __name__ == "__main__":
    run(main)
