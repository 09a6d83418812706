"""The project's checks on one GPU within a time budget, ending in one summary table.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out DIR] [--budget 300]

On the GPU machine run it through ``bash benchmarks/gpu_check.sh`` (it installs the carried
wheels first; docs/performance.md, "GPU"). Four parts, each its own process:

1. tests: the DY-ReLU CUDA tests (tests/test_dyrelu_cuda.py): every backend CUDA runs
   (compiled, reference) in float32 against the float64 reference, and bfloat16 autocast
   against float32.
2. layer: bench_activation.py, one DY-ReLU layer's time and memory as multiples of ReLU's.
3. train step: bench_train_step.py with bf16 autocast at batch 64, 256x192, eager and under
   torch.compile, for ReLU/ReLU, B/B, C/C, ReLU/C and C/ReLU. Targets: C/C at most 1.25x
   ReLU/ReLU's time and 1.5x its peak memory.
4. training: the synthetic config trained through tools/train.py with bf16; the loss of the
   last two logged steps must be below that of the first two.

``--device cpu`` runs the same parts at tiny sizes, in float32 and without torch.compile
(bfloat16 would send DY-ReLU to its compiled backend, and compiling takes minutes on a CPU),
so that the test suite exercises this script, the benchmarks' JSON output and the summary in
well under a minute; on the CPU the CUDA tests skip, and the summary says so. The
benchmarks' targets are judged on CUDA only.

Each part gets a share of the budget (PARTS), so that a slow compile in one part cannot take
the time of the others, and the summary is written whatever happens. DIR (default $OUT, else
work_dirs/gpu_check) receives at most 6 files: each part's log, summary.md and summary.json.
Scratch data (the benchmarks' JSON rows, the synthetic dataset, the training run) goes to a
temporary folder, so that DIR stays within what the GPU machine sends back.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = "configs/synthetic/mobilenetv2_x0.5_160x128.yaml"
PAIRS = "relu/relu,dyrelu_b/dyrelu_b,dyrelu_c/dyrelu_c,relu/dyrelu_c,dyrelu_c/relu"
# Each part's share of the budget; a part may also use what the parts before it left.
PARTS = {"tests": 0.25, "layer": 0.15, "train_step": 0.35, "training": 0.25}
TIME_TARGET, MEMORY_TARGET = 1.25, 1.5


@dataclass(frozen=True)
class Sizes:
    """What differs between the CUDA run and the CPU's quick run."""

    shapes: tuple[str, ...]  # bench_activation's N,C,H,W
    batch: int
    size: tuple[int, int]
    steps: int
    compile: bool
    amp: str
    train_images: int
    val_images: int
    train_overrides: tuple[str, ...]


SIZES = {
    "cuda": Sizes(shapes=("32,24,64,48", "32,96,32,24", "32,192,32,24", "32,96,64,48"),
                  batch=64, size=(256, 192), steps=10, compile=True, amp="bf16",
                  train_images=1200, val_images=50,
                  train_overrides=("train.epochs=4", "train.milestones=[3]",
                                   "eval.interval=4", "runtime.log_interval=25",
                                   "data.num_workers=4")),
    "cpu": Sizes(shapes=("2,8,16,12",), batch=2, size=(64, 64), steps=2, compile=False,
                 amp="none",
                 train_images=32, val_images=4,
                 train_overrides=("train.epochs=2", "train.milestones=[2]", "eval.interval=2",
                                  "runtime.log_interval=1", "data.num_workers=0",
                                  "data.input_size=[64,64]", "train.warmup_iters=0",
                                  "eval.batch_size=4")),
}


@dataclass
class Row:
    check: str
    result: str  # ok, MISSED (a target not met), FAILED (no result), skipped
    detail: str
    seconds: float


def run(name: str, commands: list[list[str]], out: Path, deadline: float) -> tuple[int, str,
                                                                                  float]:
    """(exit code, output, seconds) of one part's commands, run one after the other until one
    fails, stopped at the deadline (exit code 124). The output goes to OUT/<name>.log."""
    start, code, text = time.time(), 0, ""
    for command in commands:
        print(f"== {name}: {' '.join(command)}", flush=True)
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(deadline - time.time(), 1),
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            code, text = done.returncode, text + done.stdout + done.stderr
        except subprocess.TimeoutExpired as error:
            code = 124
            text += _text(error.stdout) + _text(error.stderr) + "\n[stopped at the deadline]\n"
        if code != 0:
            break
    (out / f"{name}.log").write_text(text)
    print("\n".join(text.splitlines()[-15:]), flush=True)
    return code, text, time.time() - start


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def failed(check: str, code: int, text: str, seconds: float) -> Row:
    reason = "stopped at its deadline" if code == 124 else f"exit code {code}"
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    return Row(check, "FAILED", f"{reason}: {last[:160]}", seconds)


def tests_row(code: int, text: str, seconds: float, device: str) -> Row:
    counts = dict((word, int(n)) for n, word in
                  re.findall(r"(\d+) (passed|failed|skipped|errors?)", text))
    detail = ", ".join(f"{n} {word}" for word, n in counts.items()) or "no result"
    if code != 0:
        return Row("CUDA correctness tests", "FAILED", detail, seconds)
    if not counts.get("passed"):
        why = "no CUDA device" if device == "cpu" else "nothing ran"
        return Row("CUDA correctness tests", "skipped", f"{detail} ({why})", seconds)
    return Row("CUDA correctness tests", "ok", detail, seconds)


def layer_row(rows: list[dict], seconds: float) -> Row:
    """DY-ReLU-C's time and saved/peak memory as multiples of ReLU's, per shape."""
    cells = [f"{'x'.join(map(str, r['shape']))}: {r['time_ratio']:.2f}x time, "
             f"{r['saved_ratio']:.2f}x memory" for r in rows if r["layer"] == "dyrelu_c"]
    return Row("one layer, DY-ReLU-C / ReLU", "ok" if cells else "FAILED",
               "; ".join(cells) or "no DY-ReLU-C row", seconds)


def train_step_rows(rows: list[dict], seconds: float, judged: bool) -> list[Row]:
    """One row per mode (eager, compiled): C/C against the targets."""
    result = []
    for r in rows:
        if (r["backbone"], r["head"]) != ("dyrelu_c", "dyrelu_c") or r["revision"]:
            continue
        met = r["time_ratio"] <= TIME_TARGET and r["memory_ratio"] <= MEMORY_TARGET
        verdict = ("ok" if met else "MISSED") if judged else "ok"
        mode = "compiled" if r["compiled"] else "eager"
        result.append(Row(f"train step C/C / ReLU/ReLU, {mode}", verdict,
                          f"{r['time_ratio']:.2f}x time (target <= {TIME_TARGET}), "
                          f"{r['memory_ratio']:.2f}x {r['memory_kind']} "
                          f"(target <= {MEMORY_TARGET}), {r['images_per_s']:.0f} img/s",
                          seconds))
    return result or [Row("train step C/C", "FAILED", "no C/C row", seconds)]


def training_row(log: Path, code: int, text: str, seconds: float) -> Row:
    losses = []
    if log.is_file():
        losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines())
                  if r.get("kind") == "train" and "loss" in r]
    if code != 0 or len(losses) < 4:
        return failed("synthetic training", code, text, seconds) if code != 0 else \
            Row("synthetic training", "FAILED", f"{len(losses)} logged steps (4 needed)", seconds)
    falls = sum(losses[-2:]) < sum(losses[:2])
    return Row("synthetic training", "ok" if falls else "FAILED",
               f"{len(losses)} logged steps, loss {losses[0]:.3g} -> {losses[-1]:.3g} "
               f"({'falls' if falls else 'does not fall'})", seconds)


def summary(rows: list[Row], device: str, budget: float, elapsed: float) -> str:
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() \
        else device
    lines = [f"# GPU check: {name}, torch {torch.__version__}, {elapsed:.0f} s of a {budget:.0f} s "
             "budget", "", "| check | result | detail | seconds |", "|---|---|---|---|"]
    lines += [f"| {r.check} | {r.result} | {r.detail} | {r.seconds:.0f} |" for r in rows]
    missed = [r for r in rows if r.result in ("MISSED", "FAILED")]
    if missed:
        lines += ["", "Not met: " + "; ".join(f"{r.check} ({r.result})" for r in missed) + "."]
    elif device == "cuda":
        lines += ["", "Targets: all met."]
    else:
        lines += ["", "Every part ran (the targets are judged on CUDA only)."]
    if device == "cuda":
        lines += ["", "For docs/performance.md, section GPU: the device and torch version above, "
                  "and the train-step rows (time and memory of C/C as multiples of ReLU/ReLU, "
                  "eager and compiled, bf16, batch 64 at 256x192); for the README's results "
                  "list, the compiled C/C time and memory ratios."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "work_dirs/gpu_check"))
    parser.add_argument("--budget", type=float, default=300, help="seconds for all parts")
    args = parser.parse_args(argv)
    sizes = SIZES[args.device]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python, start = sys.executable, time.time()
    share_end = dict(zip(PARTS, (start + f * args.budget for f in accumulate(PARTS.values()))))
    rows: list[Row] = []

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        scratch = Path(scratch)
        code, text, seconds = run("tests", [[
            python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_dyrelu_cuda.py"]], out, share_end["tests"])
        rows.append(tests_row(code, text, seconds, args.device))

        rows_file = scratch / "layer.json"
        code, text, seconds = run("layer", [[
            python, "benchmarks/bench_activation.py", "--device", args.device,
            "--repeats", "20" if args.device == "cuda" else "2", "--shapes", *sizes.shapes,
            "--json", str(rows_file), *([] if sizes.compile else ["--no-compile"])]],
            out, share_end["layer"])
        rows.append(layer_row(json.loads(rows_file.read_text()), seconds) if code == 0
                    else failed("one layer, DY-ReLU-C / ReLU", code, text, seconds))

        rows_file = scratch / "train_step.json"
        code, text, seconds = run("train_step", [[
            python, "benchmarks/bench_train_step.py", "--device", args.device,
            "--amp", sizes.amp, "--batch", str(sizes.batch), "--size", *map(str, sizes.size),
            "--steps", str(sizes.steps), "--warmup", "3" if args.device == "cuda" else "1",
            "--pairs", PAIRS, "--json", str(rows_file),
            *(["--compile"] if sizes.compile else [])]], out, share_end["train_step"])
        rows += (train_step_rows(json.loads(rows_file.read_text()), seconds,
                                 judged=args.device == "cuda") if code == 0
                 else [failed("train step C/C / ReLU/ReLU", code, text, seconds)])

        data, work = scratch / "synthetic", scratch / "train"
        sets = [item for pair in (("--set", f"data.root={data}"),
                                  ("--set", f"runtime.device={args.device}"),
                                  ("--set", f"train.amp={sizes.amp}"),
                                  *(("--set", o) for o in sizes.train_overrides))
                for item in pair]
        code, text, seconds = run("training", [
            [python, "-m", "pose.data.synthetic", "--out", str(data), "--train",
             str(sizes.train_images), "--val", str(sizes.val_images), "--seed", "0"],
            [python, "tools/train.py", "--config", SYNTHETIC, "--work-dir", str(work), *sets]],
            out, share_end["training"])
        rows.append(training_row(work / "log.jsonl", code, text, seconds))

    text = summary(rows, args.device, args.budget, time.time() - start)
    print("\n" + text, flush=True)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 1 if any(r.result == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
