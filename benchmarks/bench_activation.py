"""DY-ReLU layer cost against ReLU, side by side in one run.

For pose-typical shapes, forward+backward time and the bytes autograd saves for backward of:
ReLU, our DY-ReLU-A/B/C (the whole module: hyper function, attention, piecewise maximum; C
also with spatial="residual", as "cr") and a naive DY-ReLU written here from the formulas,
which materialises (N, C, H, W, K) (the reference backend, pose/models/dyrelu/reference.py).
Prints each as a ratio to ReLU. On the CPU our layers run the native backend; each is also
timed on the compiled backend that CUDA and bfloat16 take ("compiled/ours"), and with
``--against REV`` beside an earlier revision's layer ("ours/old", benchmarks/legacy.py).

It also times a pass-by-pass floor for each variant: ReLU's step plus the full-tensor reads
that variant makes when each pass runs over the whole batch (as the compiled path does), each
done by one ATen reduction. A and B read x once more for the pooling, and x and the output
gradient once more for the coefficient gradients, which must be complete before the input
gradient can include the pooling's gradient. C also reads x for the attention logits, x and
the gradient for the attention gradient, and x for the spatial conv's weight gradient. A
pass-by-pass layer can beat its floor only by doing its arithmetic for free; the native
kernels make all passes over one sample while it is in cache, so those extra reads mostly
hit the cache instead of memory, and they can beat it.

The last shape is tiny, so its times are the fixed cost of a layer (Python, the autograd
function, the kernel calls). That cost is timed again with the caches flushed before each
step (a pass over a buffer twice the size of this CPU's 32 MB L3), as in a model, where the
big layers around a layer have just evicted the code and data its Python touches. Last, one
pass y = 2x is timed through ATen and through torch.compile: what inductor's generated CPU
loops cost against ATen's for the same memory traffic.

Times are medians of interleaved steps (benchmarks/measurements.py); each step reads its own
copy of the input and gradient, so no step finds another's data in cache.

    python benchmarks/bench_activation.py [--threads 2] [--device cpu|cuda] [--amp bf16]
        [--shapes 2,8,16,12 ...] [--no-compile] [--json rows.json] [--against 8a0c83b]

``--no-compile`` leaves out what needs torch.compile on the CPU (the compiled-backend column
and the one-pass timing), for a quick run; ``--json FILE`` also writes the main rows as JSON
(what benchmarks/gpu_check.py reads).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from pose.models.dyrelu import DyReLU

from legacy import legacy_dyrelu, swap_dyrelu  # this folder
from measurements import device_sync, interleaved_medians, keep_freed_memory, saved_bytes

SHAPES = [(32, 24, 64, 48), (32, 96, 32, 24), (32, 192, 32, 24), (32, 96, 64, 48), (2, 96, 4, 4)]
# Layer name suffix -> DyReLU options; "cr" is C with spatial="residual", whose compiled
# backward runs its passes one by one (pose/models/dyrelu/compiled.py).
VARIANTS = {"a": {"variant": "a"}, "b": {"variant": "b"}, "c": {"variant": "c"},
            "cr": {"variant": "c", "spatial": "residual"}}


def sharing_weights(layer: DyReLU, backend: str) -> DyReLU:
    """The same layer (options and parameters shared) on another backend."""
    twin = DyReLU(layer.channels, variant=layer.variant, k=layer.settings.k, spatial=layer.spatial,
                  backend=backend)
    twin.fc1, twin.fc2 = layer.fc1, layer.fc2
    if layer.variant == "c":
        twin.spatial_conv = layer.spatial_conv
    return twin


def fwd_bwd_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, amp):
    def step():
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            y = layer(x)
        y.backward(grad.to(y.dtype))
        x.grad = None

    return step


def floor_step(relu_step, x: torch.Tensor, grad: torch.Tensor, variant: str):
    """ReLU's forward+backward plus the extra passes over memory of a DY-ReLU variant."""
    def step():
        relu_step()
        with torch.no_grad():
            x.sum((2, 3))  # pooling
            x.sum((2, 3)), grad.sum((2, 3))  # coefficient gradients
            if variant == "c":
                x.sum(1)  # attention logits
                x.sum(1), grad.sum(1)  # attention gradient
                x.sum((0, 2, 3))  # spatial conv's weight gradient

    return step


def print_fixed_cost_after_a_flush(steps, shape, repeats: int) -> None:
    """The last (tiny) shape's ReLU and DY-ReLU steps again, each after a cache flush."""
    flushed = torch.zeros(2 * 2**25 // 4)  # 64 MB of float32
    names = ["relu", *(f"dyrelu_{key}" for key in VARIANTS)]
    names += [f"old_{key}" for key in VARIANTS if f"old_{key}" in steps]
    seconds = interleaved_medians({name: steps[name] for name in names}, repeats,
                                  before=lambda: flushed.add_(1.0))
    print(f"{str(shape):>20} after a cache flush: " + ", ".join(
        f"{name} {seconds[name] * 1e3:.3f} ms ({seconds[name] / seconds['relu']:.2f}x)"
        for name in names))


def one_pass_times(shape, device, repeats: int) -> dict[str, float]:
    """Seconds of y = 2x through ATen and through an inductor-compiled kernel."""
    x, x_copy = torch.randn(shape, device=device), torch.randn(shape, device=device)
    compiled = torch.compile(lambda t: t * 2.0, dynamic=True)
    steps = {"aten": lambda: x * 2.0, "compiled": lambda: compiled(x_copy)}
    return interleaved_medians(steps, repeats, sync=device_sync(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--against", metavar="REV",
                        help="also time an earlier revision's layer (benchmarks/legacy.py), "
                             "e.g. 8a0c83b: column ours/old")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's default of returning freed memory (pose/allocator.py)")
    parser.add_argument("--shapes", nargs="+", metavar="N,C,H,W",
                        type=lambda text: tuple(int(v) for v in text.split(",")),
                        default=SHAPES, help="input shapes (default: pose-typical ones)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the rows that need torch.compile on the CPU")
    parser.add_argument("--json", metavar="FILE", help="also write the main rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steady = not args.system_malloc and keep_freed_memory()
    device = torch.device(args.device)
    legacy = legacy_dyrelu(args.against) if args.against else None
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    print(f"device {device}, {args.threads} threads, amp {args.amp}, "
          f"torch {torch.__version__}, freed memory kept: {steady}")
    print(f"{'shape (N,C,H,W)':>20} {'layer':>10} {'ms':>8} {'x ReLU':>7} "
          f"{'saved MB':>9} {'x ReLU':>7} {'naive/ours':>10} {'ours/floor':>10} "
          f"{'compiled/ours':>13} {'ours/old':>8}")
    rows = []
    for shape in args.shapes:
        torch.manual_seed(0)
        x = torch.randn(shape, device=device, requires_grad=True)
        channels = shape[1]
        layers = {"relu": nn.ReLU()}
        for key, options in VARIANTS.items():
            layers[f"dyrelu_{key}"] = DyReLU(channels, **options)
            # The reference backend: autograd through the formula, (N, C, H, W, K) kept.
            layers[f"naive_{key}"] = sharing_weights(layers[f"dyrelu_{key}"], "reference")
            if device.type == "cpu" and not args.no_compile:
                layers[f"compiled_{key}"] = sharing_weights(layers[f"dyrelu_{key}"], "compiled")
            if legacy is not None:
                layers[f"old_{key}"] = swap_dyrelu(nn.Sequential(layers[f"dyrelu_{key}"]),
                                                   legacy)[0]
        for layer in layers.values():
            layer.to(device)
        grad = torch.randn_like(x)
        # Each step reads its own copy of x and the gradient: with one shared copy, a step
        # that follows one that read it finds it in cache, and the order changes the ratios.
        copies = {name: (x.detach().clone().requires_grad_(), grad.clone())
                  for name in [*layers, "floor_ab", "floor_c"]}
        steps = {name: fwd_bwd_step(layer, *copies[name], amp) for name, layer in layers.items()}
        for name, variant in (("floor_ab", "b"), ("floor_c", "c")):
            relu_step = fwd_bwd_step(layers["relu"], *copies[name], amp)
            steps[name] = floor_step(relu_step, *copies[name], variant)
        # A step at the tiny shape takes about 0.1 ms, where one call that the VM delays moves
        # a median of 20 by 10-20%: it is repeated 25x as often, for about the same seconds.
        repeats = args.repeats * (25 if x.numel() < 2**16 else 1)
        seconds = interleaved_medians(steps, repeats, sync=device_sync(device))
        results = {name: (seconds[name], saved_bytes(lambda: layer(x)))
                   for name, layer in layers.items()
                   if not name.startswith(("compiled", "old"))}
        base_time, base_bytes = results["relu"]
        for name, (elapsed, nbytes) in results.items():
            naive = floor = compiled = old = ""
            if name.startswith("dyrelu"):
                key = name.split("_")[1]
                naive = f"{results['naive_' + key][0] / elapsed:.2f}x"
                floor = f"{elapsed / seconds['floor_c' if key[0] == 'c' else 'floor_ab']:.2f}x"
                if f"compiled_{key}" in seconds:
                    compiled = f"{seconds['compiled_' + key] / elapsed:.2f}x"
                if f"old_{key}" in seconds:
                    old = f"{elapsed / seconds['old_' + key]:.2f}x"
            print(f"{str(shape):>20} {name:>10} {elapsed * 1e3:8.2f} {elapsed / base_time:6.2f}x "
                  f"{nbytes / 2**20:9.1f} {nbytes / base_bytes:6.2f}x {naive:>10} {floor:>10} "
                  f"{compiled:>13} {old:>8}")
            rows.append({"shape": list(shape), "layer": name, "ms": elapsed * 1e3,
                         "time_ratio": elapsed / base_time, "saved_bytes": nbytes,
                         "saved_ratio": nbytes / base_bytes})
        extra = [name for name in seconds if name.startswith(("compiled", "old"))]
        for name in (*extra, "floor_ab", "floor_c"):
            print(f"{str(shape):>20} {name:>10} {seconds[name] * 1e3:8.2f} "
                  f"{seconds[name] / base_time:6.2f}x", flush=True)

    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if device.type == "cpu":
        print_fixed_cost_after_a_flush(steps, shape, args.repeats)  # the last shape's steps
    if not (args.no_compile and device.type == "cpu"):
        shape = args.shapes[min(1, len(args.shapes) - 1)]
        one_pass = one_pass_times(shape, device, args.repeats)
        print(f"one pass y = 2x at {shape}: ATen {one_pass['aten'] * 1e3:.3f} ms, torch.compile "
              f"{one_pass['compiled'] * 1e3:.3f} ms "
              f"({one_pass['compiled'] / one_pass['aten']:.2f}x)")


if __name__ == "__main__":
    main()
