"""DY-ReLU layer cost against ReLU, side by side in one run.

For pose-typical shapes, forward+backward time and the bytes autograd saves for backward of:
ReLU, our DY-ReLU-A/B/C (the whole module: hyper function, attention, piecewise maximum) and a
naive DY-ReLU written here from the formulas, which materialises (N, C, H, W, K). Prints each
as a ratio to ReLU.

Times are medians of interleaved steps (benchmarks/measurements.py).

    python benchmarks/bench_activation.py [--threads 2] [--device cpu|cuda] [--amp bf16]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from pose.models.activations import DyReLU

from measurements import interleaved_medians, keep_freed_memory, saved_bytes  # this folder

SHAPES = [(32, 24, 64, 48), (32, 96, 32, 24), (32, 192, 32, 24), (32, 96, 64, 48)]


class NaiveDyReLU(nn.Module):
    """The formulas as written: every piece for every element, stacked on a last K axis."""

    def __init__(self, reference: DyReLU) -> None:
        super().__init__()
        self.ref = reference

    def forward(self, x):
        ref = self.ref
        da, db = ref.coefficients(x.mean(dim=(2, 3)))  # (N, G, K)
        a = (ref.alpha + da)[:, :, None, None, :]
        b = (ref.beta + db)[:, :, None, None, :]
        if ref.variant == "c":
            logits = nn.functional.conv2d(x, ref.spatial_conv.weight)
            pi = ref.attention(logits)[..., None]  # (N, 1, H, W, 1)
            a, b = pi * a, pi * b
        return (a * x[..., None] + b).max(dim=-1).values


def fwd_bwd_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, amp):
    def step():
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            y = layer(x)
        y.backward(grad.to(y.dtype))
        x.grad = None

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's default of returning freed memory (measurements.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady = not args.system_malloc and keep_freed_memory()
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    print(f"device {device}, {args.threads} threads, amp {args.amp}, "
          f"torch {torch.__version__}, freed memory kept: {steady}")
    print(f"{'shape (N,C,H,W)':>20} {'layer':>10} {'ms':>8} {'x ReLU':>7} "
          f"{'saved MB':>9} {'x ReLU':>7} {'naive/ours':>10}")
    for shape in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(shape, device=device, requires_grad=True)
        channels = shape[1]
        layers = {"relu": nn.ReLU()}
        for variant in "abc":
            layers[f"dyrelu_{variant}"] = DyReLU(channels, variant=variant)
            layers[f"naive_{variant}"] = NaiveDyReLU(layers[f"dyrelu_{variant}"])
        for layer in layers.values():
            layer.to(device)
        grad = torch.randn_like(x)
        steps = {name: fwd_bwd_step(layer, x, grad, amp) for name, layer in layers.items()}
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        seconds = interleaved_medians(steps, args.repeats, sync=sync)
        results = {name: (seconds[name], saved_bytes(lambda: layer(x)))
                   for name, layer in layers.items()}
        base_time, base_bytes = results["relu"]
        for name, (seconds, nbytes) in results.items():
            naive = ""
            if name.startswith("dyrelu"):
                naive = f"{results['naive_' + name[-1]][0] / seconds:.2f}x"
            print(f"{str(shape):>20} {name:>10} {seconds * 1e3:8.2f} {seconds / base_time:6.2f}x "
                  f"{nbytes / 2**20:9.1f} {nbytes / base_bytes:6.2f}x {naive:>10}", flush=True)


if __name__ == "__main__":
    main()
