"""The project's checks on one GPU, in at most 8 minutes, with one summary table at the end.

    python benchmarks/gpu_check.py [--out DIR] [--budget 480]

1. The DY-ReLU correctness tests on CUDA (tests/test_dyrelu_cuda.py): every backend CUDA runs
   (compiled, reference) in float32 against the float64 reference, and bfloat16 autocast
   against float32 (tolerances stated in the test).
2. bench_activation.py --device cuda (per-layer time and memory, ratios to ReLU).
3. bench_train_step.py --device cuda --amp bf16, batch 64 at 256x192, eager and --compile:
   ReLU/ReLU, B/B, C/C, ReLU/C and C/ReLU. Targets: C/C at most 1.25x ReLU/ReLU's time and
   1.5x its peak memory.
4. 300 training steps of the synthetic config on CUDA with bf16 (tools/train.py): the loss of
   the last logged steps must be below that of the first.

Each part runs as its own process with what is left of the budget; the output of each goes to
DIR (default $OUT if set, else work_dirs/gpu_check) and its last lines to the console.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = "relu/relu,dyrelu_b/dyrelu_b,dyrelu_c/dyrelu_c,relu/dyrelu_c,dyrelu_c/relu"
SYNTHETIC = "configs/synthetic/mobilenetv2_x0.5_160x128.yaml"


def run(name: str, command: list[str], out: Path, deadline: float) -> tuple[int, str, float]:
    """(exit code, output, seconds) of one part, stopped at the deadline (exit code 124)."""
    start = time.time()
    timeout = max(deadline - start, 1)
    print(f"== {name}: {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code = 124
        text = (error.stdout or b"").decode() + (error.stderr or b"").decode()
    (out / f"{name}.log").write_text(text)
    print("\n".join(text.splitlines()[-25:]), flush=True)
    return code, text, time.time() - start


def train_step_ratios(text: str) -> dict[str, tuple[float, float]]:
    """C/C's time and memory as multiples of ReLU/ReLU, eager and compiled."""
    ratios = {}
    for line in text.splitlines():
        match = re.match(r"\s*dyrelu_c\s+dyrelu_c\s+[\d.]+\s+([\d.]+)x\s+[\d.]+\s+([\d.]+)x(.*)",
                         line)
        if match:
            kind = "compiled" if "compiled" in match.group(3) else "eager"
            ratios[kind] = (float(match.group(1)), float(match.group(2)))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "work_dirs/gpu_check"))
    parser.add_argument("--budget", type=float, default=480, help="seconds for all parts")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    python = sys.executable
    rows = []

    code, text, seconds = run("tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                        "tests/test_dyrelu_cuda.py"], out, deadline)
    summary = (re.findall(r"\d+ passed[^\n]*|\d+ failed[^\n]*", text) or ["no result"])[-1]
    rows.append(("CUDA correctness tests", "ok" if code == 0 else "FAILED", summary, seconds))

    code, text, seconds = run("bench_activation", [
        python, "benchmarks/bench_activation.py", "--device", "cuda", "--repeats", "20"],
        out, deadline)
    c_rows = [line.split()[5] for line in text.splitlines() if " dyrelu_c " in line]
    rows.append(("bench_activation (C x ReLU)", "ok" if code == 0 else "FAILED",
                 ", ".join(c_rows) or "no result", seconds))

    code, text, seconds = run("bench_train_step", [
        python, "benchmarks/bench_train_step.py", "--device", "cuda", "--amp", "bf16",
        "--batch", "64", "--size", "256", "192", "--compile", "--steps", "10",
        "--warmup", "3", "--pairs", PAIRS], out, deadline)
    ratios = train_step_ratios(text)
    for kind, (time_ratio, memory_ratio) in ratios.items():
        met = time_ratio <= 1.25 and memory_ratio <= 1.5
        rows.append((f"train step C/C, {kind}", "ok" if met else "MISSED",
                     f"{time_ratio:.2f}x time (<= 1.25), {memory_ratio:.2f}x memory (<= 1.5)",
                     seconds))
    if not ratios:
        rows.append(("train step C/C", "FAILED", "no result", seconds))

    data = out / "synthetic"
    work = out / "train"
    code, text, seconds = run("train", [
        python, "-c", "import sys, runpy; from pose.data.synthetic import generate; "
        f"generate('{data}', train=1200, val=50, seed=0); "
        f"sys.argv = ['tools/train.py', '--config', '{SYNTHETIC}', '--work-dir', '{work}', "
        f"'--set', 'data.root={data}', '--set', 'runtime.device=cuda', "
        "'--set', 'train.amp=bf16', '--set', 'train.epochs=4', "
        "'--set', 'train.milestones=[3]', '--set', 'eval.interval=4', "
        "'--set', 'runtime.log_interval=25', '--set', 'data.num_workers=4']; "
        "runpy.run_path('tools/train.py', run_name='__main__')"], out, deadline)
    losses = []
    log = work / "log.jsonl"
    if log.is_file():
        losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines())
                  if r.get("kind") == "train" and "loss" in r]
    falls = len(losses) >= 4 and sum(losses[-2:]) < sum(losses[:2])
    detail = (f"{len(losses)} logged steps, loss {losses[0]:.2e} -> {losses[-1]:.2e}"
              if losses else "no loss logged")
    rows.append(("synthetic training, bf16", "ok" if code == 0 and falls else "FAILED", detail,
                 seconds))

    print("\n| check | result | detail | seconds |\n|---|---|---|---|")
    for name, result, detail, seconds in rows:
        print(f"| {name} | {result} | {detail} | {seconds:.0f} |")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
