"""Training through tools/train.py with each allocator setting, side by side in one run.

Runs a short synthetic ReLU/ReLU training (the tool itself, as a user runs it) with:
- ``default``: glibc's default, each big tensor a fresh mmap (POSE_KEEP_FREED_MEMORY=0);
- ``kept``: the project's default, glibc keeping freed memory (pose/allocator.py);
- ``jemalloc`` and ``tcmalloc``, preloaded (LD_PRELOAD, with POSE_KEEP_FREED_MEMORY=0),
  where their libraries are installed (Debian: libjemalloc2, libtcmalloc-minimal4).
The runs take turns, ``--rounds`` times each, so that a slow spell of the machine hits all
alike. Prints per setting the median wall time, the training img/s from the run's log and
the main process's peak RSS and minor page faults (DataLoader workers not included), and
checks that every
setting's final weights are bit-identical to the default's.

    python benchmarks/bench_allocator.py [--steps 200] [--rounds 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/synthetic/mobilenetv2_x0.5_160x128.yaml"
PRELOADS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}
BATCH = 16


def settings() -> dict[str, dict[str, str]]:
    found = {"default": {"POSE_KEEP_FREED_MEMORY": "0"}, "kept": {"POSE_KEEP_FREED_MEMORY": "1"}}
    for name, library in PRELOADS.items():
        if Path(library).is_file():
            found[name] = {"POSE_KEEP_FREED_MEMORY": "0", "LD_PRELOAD": library}
    return found


def train_run(data: Path, work: Path, steps: int, threads: int, env: dict[str, str]):
    """(wall seconds, img/s of training, peak RSS in MiB, page faults in thousands) of one
    tools/train.py run."""
    epochs = 2
    # 96x64 crops and batch 16, the synthetic config's when docs/performance.md's figures
    # were taken.
    command = [sys.executable, str(ROOT / "tools/train.py"), "--config", str(CONFIG),
               "--work-dir", str(work), "--set", f"data.root={data}",
               "--set", "data.input_size=[96,64]", "--set", f"train.batch_size={BATCH}",
               "--set", f"train.epochs={epochs}", "--set", "train.milestones=[1]",
               "--set", f"train.max_iters_per_epoch={steps // epochs}",
               "--set", f"eval.interval={epochs}", "--set", f"runtime.num_threads={threads}"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, **env})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed ({env}): {process.stderr.read().decode()[-2000:]}")
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in records if r["kind"] == "epoch"]
    return seconds, statistics.mean(speeds), usage.ru_maxrss / 1024, usage.ru_minflt / 1000


def weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / "latest.pth", map_location="cpu", weights_only=False)["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from pose.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench-allocator-") as tmp:
        data = generate(Path(tmp) / "data", train=args.steps // 2 * BATCH, val=32, seed=0)
        results: dict[str, list[tuple[float, float, float, float]]] = {}
        final = {}
        for round_ in range(args.rounds):
            for name, env in settings().items():
                work = Path(tmp) / f"{name}-{round_}"
                results.setdefault(name, []).append(
                    train_run(data, work, args.steps, args.threads, env))
                final[name] = weights(work)
        print(f"{args.steps} steps of batch {BATCH} at 96x64, ReLU/ReLU, {args.threads} "
              f"threads, {args.rounds} rounds, torch {torch.__version__}")
        print(f"{'allocator':>10} {'wall s':>8} {'x default':>9} {'img/s':>7} {'peak RSS MiB':>13} "
              f"{'x default':>9} {'faults k':>9} {'weights':>10}")
        base = statistics.median(r[0] for r in results["default"])
        base_rss = statistics.median(r[2] for r in results["default"])
        for name, runs in results.items():
            wall = statistics.median(r[0] for r in runs)
            speed = statistics.median(r[1] for r in runs)
            rss = statistics.median(r[2] for r in runs)
            faults = statistics.median(r[3] for r in runs)
            same = all(torch.equal(final[name][k], v) for k, v in final["default"].items())
            print(f"{name:>10} {wall:8.1f} {wall / base:8.2f}x {speed:7.1f} {rss:13.0f} "
                  f"{rss / base_rss:8.2f}x {faults:9.0f} {'identical' if same else 'DIFFERENT':>10}")


if __name__ == "__main__":
    main()
