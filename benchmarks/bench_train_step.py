"""Full train step (forward, MSE loss, backward, Adam) for all 16 pairings, side by side.

Prints img/s and memory for each backbone/head pairing as ratios to the first (ReLU/ReLU by
default) measured in the same run, timed as medians of interleaved steps (measurements.py).
Memory is the peak allocated on CUDA; on the CPU, which has no such counter, the bytes
autograd saves for backward (the activation memory a step holds at its peak).

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--batch 16] [--size 256 192]
        [--amp bf16] [--channels-last] [--compile] [--pairs relu/relu,dyrelu_c/dyrelu_c]
        [--json rows.json]

``--compile`` adds, for each pairing, the same model wrapped in ``torch.compile`` (rows
marked "compiled"), measured in the same run. On the CPU, inductor keeps the native DY-ReLU
kernels whole, as registered operators (pose/models/dyrelu/ops.py).
``--against REV`` adds, for each pairing with a DY-ReLU, the same model with that earlier
revision's layer (rows marked "REV", benchmarks/legacy.py). ``--json FILE`` also writes the
rows as JSON (what benchmarks/gpu_check.py reads).

``--tool-steps N`` (CPU) adds a last row: ReLU/ReLU trained for N steps through
``tools/train.py`` itself on synthetic data (batch 16 at 96x64, data loading, logging and the
allocator set-up included), beside this script's in-process step at that size, so that the
benchmark and the tool cannot drift apart unseen.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from pose.config import ModelConfig
from pose.models import build_model

from legacy import legacy_dyrelu, swap_dyrelu  # this folder
from measurements import device_sync, interleaved_medians, keep_freed_memory, saved_bytes

ACTS = ("relu", "dyrelu_a", "dyrelu_b", "dyrelu_c")
# Measured last by default: PReLU is the cheapest activation that, like DY-ReLU, has learned
# parameters and cannot run in place, so in eager mode its ratio is the floor of any such
# activation here (under --compile, inductor fuses it with BatchNorm: README, Performance).
FLOOR = ("prelu", "prelu")


def train_step(backbone: str, head: str, compiled: bool, revision: str, args, device):
    """(one train step as a callable, its model, its images) for a backbone/head pairing, with
    an earlier revision's DY-ReLU layer where ``revision`` is not empty."""
    cfg = ModelConfig()
    cfg.backbone.act, cfg.head.act = backbone, head
    torch.manual_seed(0)
    model = build_model(cfg)
    if revision:
        swap_dyrelu(model, legacy_dyrelu(revision))
    model = model.to(device)
    images = torch.randn(args.batch, 3, *args.size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.rand(args.batch, 17, args.size[0] // 4, args.size[1] // 4, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if compiled:
        # One eager call first, as docs/performance.md advises: each DY-ReLU layer chooses
        # its backend at its first call, which torch.compile would otherwise meet as a
        # graph break in every layer.
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model(images[:1])
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            output = model(images)
        loss = (output.float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, model, images


def measure(runs, args, device) -> dict[tuple[str, str, bool, str], tuple[float, int]]:
    """img/s and memory of each run (backbone, head, compiled, revision), the steps interleaved
    (measurements.py)."""
    built = {run: train_step(*run, args, device) for run in runs}
    seconds = interleaved_medians({run: step for run, (step, _, _) in built.items()},
                                  args.steps, warmup=args.warmup, sync=device_sync(device))
    results = {}
    for run, (step, model, images) in built.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            memory = torch.cuda.max_memory_allocated()
        else:
            memory = saved_bytes(lambda: model(images).float().square().mean().backward())
        results[run] = (args.batch / seconds[run], memory)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 192])
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also run each pairing under torch.compile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per pairing")
    parser.add_argument("--tool-steps", type=int, default=0,
                        help="also train ReLU/ReLU for this many steps through tools/train.py")
    parser.add_argument("--against", metavar="REV", default="",
                        help="also run each DY-ReLU pairing with an earlier revision's layer")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's default of returning freed memory (pose/allocator.py)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    parser.add_argument("--pairs", default=None,
                        help="backbone/head pairs to run (default: all 16, then prelu/prelu); "
                             "the first is the baseline of the ratios")
    args = parser.parse_args()
    pairs = list(itertools.product(ACTS, ACTS)) + [FLOOR] if args.pairs is None else \
        [tuple(pair.split("/")) for pair in args.pairs.split(",")]
    runs = [(*pair, compiled, revision) for pair in pairs
            for compiled in ((False, True) if args.compile else (False,))
            for revision in ("", args.against)
            if revision == "" or any(act.startswith("dyrelu") for act in pair)]
    torch.set_num_threads(args.threads)
    steady = not args.system_malloc and keep_freed_memory()
    device = torch.device(args.device)
    kind = "peak MB" if device.type == "cuda" else "saved MB"
    print(f"device {device}, batch {args.batch}, {args.size[0]}x{args.size[1]}, amp {args.amp}, "
          f"{args.threads} threads, torch {torch.__version__}, freed memory kept: {steady}")
    print(f"{'backbone':>9} {'head':>9} {'img/s':>8} {'time x 1st':>10} {kind:>9} {'x 1st':>6}")
    results = measure(runs, args, device)
    base = results[runs[0]]
    rows = []
    for (backbone, head, compiled, revision), (speed, memory) in results.items():
        marks = ("  compiled" if compiled else "") + (f"  {revision}" if revision else "")
        print(f"{backbone:>9} {head:>9} {speed:8.1f} {base[0] / speed:9.2f}x "
              f"{memory / 2**20:9.1f} {memory / base[1]:5.2f}x{marks}", flush=True)
        rows.append({"backbone": backbone, "head": head, "compiled": compiled,
                     "revision": revision, "images_per_s": speed, "time_ratio": base[0] / speed,
                     "memory_bytes": memory, "memory_ratio": memory / base[1],
                     "memory_kind": kind})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.tool_steps:
        compare_with_the_tool(args, device)


def compare_with_the_tool(args, device) -> None:
    """ReLU/ReLU at the synthetic config's size: this script's step against tools/train.py."""
    import tempfile

    from bench_allocator import BATCH, train_run  # this folder
    from pose.data.synthetic import generate

    small = argparse.Namespace(**{**vars(args), "batch": BATCH, "size": [96, 64]})
    in_process = measure([("relu", "relu", False, "")], small, device)
    speed = in_process[("relu", "relu", False, "")][0]
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        data = generate(Path(tmp) / "data", train=args.tool_steps // 2 * BATCH, val=16, seed=0)
        _, tool_speed, _ = train_run(data, Path(tmp) / "run", args.tool_steps, args.threads, {})
    print(f"ReLU/ReLU at 96x64, batch {BATCH}: in-process step {speed:.1f} img/s, "
          f"tools/train.py {tool_speed:.1f} img/s ({tool_speed / speed:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
