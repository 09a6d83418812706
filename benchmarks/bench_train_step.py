"""Full train step (forward, MSE loss, backward, Adam) for all 16 pairings, side by side.

Prints img/s and memory for each backbone/head pairing as ratios to ReLU/ReLU measured in the
same run. Memory is the peak allocated on CUDA; on the CPU, which has no such counter, the
bytes autograd saves for backward (the activation memory a step holds at its peak).

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--batch 16] [--size 256 192]
        [--amp bf16] [--channels-last]
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from pose.config import ModelConfig
from pose.models import build_model

ACTS = ("relu", "dyrelu_a", "dyrelu_b", "dyrelu_c")


def saved_bytes_of_step(model, images) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images).float().square().mean().backward()
    return sum(storages.values())


def measure(backbone: str, head: str, args, device) -> tuple[float, int]:
    cfg = ModelConfig()
    cfg.backbone.act, cfg.head.act = backbone, head
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    images = torch.randn(args.batch, 3, *args.size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.rand(args.batch, 17, args.size[0] // 4, args.size[1] // 4, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            output = model(images)
        loss = (output.float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else \
        saved_bytes_of_step(model, images)
    return args.batch / seconds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 192])
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kind = "peak MB" if device.type == "cuda" else "saved MB"
    print(f"device {device}, batch {args.batch}, {args.size[0]}x{args.size[1]}, amp {args.amp}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'backbone':>9} {'head':>9} {'img/s':>8} {'time x R/R':>10} {kind:>9} {'x R/R':>6}")
    base = None
    for backbone, head in itertools.product(ACTS, ACTS):
        speed, memory = measure(backbone, head, args, device)
        base = base or (speed, memory)
        print(f"{backbone:>9} {head:>9} {speed:8.1f} {base[0] / speed:9.2f}x "
              f"{memory / 2**20:9.1f} {memory / base[1]:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
