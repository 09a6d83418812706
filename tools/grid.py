"""Run the backbone x head activation grid and write Table 2 beside the paper's (or, for a
classifier config, one run per activation and Table 1).

    python tools/grid.py --config configs/synthetic/mobilenetv2_x0.5_160x128.yaml --out work_dirs/grid
    python tools/grid.py --config configs/coco/mobilenetv2_x0.5_256x192.yaml --dry-run --seeds 3 \
        --throughput 900
    python tools/grid.py --config configs/coco/mobilenetv2_x0.5_256x192.yaml --gpus 0,1,2,3,4,5,6,7 --jobs 8
    python tools/grid.py --config configs/coco/mobilenetv2_x0.5_256x192.yaml --launcher slurm \
        --gpus-per-cell 4 --set train.batch_size=32
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pose.cli import run
from pose.config import ConfigError
from pose.grid import describe, parse_acts, run_grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="base YAML config of every cell")
    parser.add_argument("--acts", default=None,
                        help="comma-separated slot specs, or a YAML list "
                             "(e.g. '[relu, {name: dyrelu_c, k: 3}]'); default: the config's "
                             "grid.acts (relu, dyrelu_a, dyrelu_b, dyrelu_c unless it says)")
    parser.add_argument("--out", help="grid folder (default: work_dirs/grid_<config name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key in every cell")
    parser.add_argument("--seeds", type=int, help="runs per cell, seeded runtime.seed, "
                        "runtime.seed + 1, ... (default: the config's grid.seeds)")
    parser.add_argument("--reference", default=None,
                        help="'BACKBONE,HEAD' (a classifier: 'ACT'): the cell the paired "
                             "differences are taken to (default: relu,relu / relu)")
    parser.add_argument("--throughput", type=float,
                        help="with --dry-run: training img/s of one run on your devices, for "
                             "the grid's device-hours")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (local)")
    parser.add_argument("--gpus", help="GPU ids for local runs, e.g. 0,1,2,3")
    parser.add_argument("--gpus-per-cell", type=int, default=1,
                        help="GPUs per cell; >1 runs each cell with torchrun")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--slurm-partition")
    parser.add_argument("--slurm-timeout-min", type=int, default=72 * 60)
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cells, their resolved activations and folders; run nothing")
    args = parser.parse_args(argv)
    try:
        acts = None if args.acts is None else parse_acts(args.acts)
        reference = None if args.reference is None else parse_acts(args.reference)
    except ValueError as error:
        raise ConfigError(f"--acts/--reference: {error}") from None
    out = Path(args.out or Path("work_dirs") / f"grid_{Path(args.config).stem}")
    if args.dry_run:
        print(describe(args.config, acts, out, args.overrides, args.seeds, args.throughput))
        return 0
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
    table = run_grid(args.config, acts, out, args.overrides, jobs=args.jobs, gpus=gpus,
                     gpus_per_cell=args.gpus_per_cell, launcher=args.launcher,
                     slurm_timeout_min=args.slurm_timeout_min,
                     slurm_partition=args.slurm_partition, seeds=args.seeds,
                     reference=reference)
    failed = [r["folder"] for c in table["cells"] for r in c["runs"]
              if r["status"] != "finished"]
    name = table.get("name", "table2")
    print(f"wrote {out}/{name}.md, {name}.csv, {name}.json, {name}.png"
          + (f"; {len(failed)} run(s) not finished" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
