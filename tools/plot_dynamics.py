"""Is DY-ReLU dynamic? Scatter its input against its output (the supplementary's Fig. 1).

For the DY-ReLU after the depthwise conv of every other backbone block, over validation
images: one panel per block, input x against output y, with the lines y = x and y = -x in red.
A static ReLU would put every point on two lines; a dynamic activation spreads them over a
band. A pose run is fed its validation crops (GT boxes); a classifier run (the paper's own
figure: MobileNetV2 x0.35 on ImageNet) the images of --image-folder (default: its validation
folder), resized and centre-cropped as in its evaluation.

    python tools/plot_dynamics.py --config CONFIG --checkpoint best.pth [--images 32] \
        [--image-folder DIR] [--out dynamics.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pose.cli import add_config_arguments, config_from_args, run
from pose.data.build import build_dataset, data_path
from pose.estimator import model_from_checkpoint, resolve_device
from pose.errors import PoseError
from pose.activation_spec import activation_name
from pose.models.mobilenetv2 import InvertedResidual
from pose.utils import atomic_write


def depthwise_activations(backbone: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, activation) after the depthwise conv of every other inverted residual block."""
    blocks = [(name, m) for name, m in backbone.named_modules() if isinstance(m, InvertedResidual)]
    chosen = []
    for index, (name, block) in enumerate(blocks):
        if index % 2 == 0:
            depthwise = block.conv[-3]  # conv -> BN -> activation, before the projection
            chosen.append((f"block {index + 1} ({name})", depthwise[-1]))
    return chosen


def classifier_images(cfg, folder=None):
    """A classifier's evaluation inputs, one (3, H, W) tensor per image file of ``folder``."""
    from pose.data.classification import IMAGE_SUFFIXES, load_image, eval_transform

    root = Path(folder) if folder else data_path(cfg, cfg.data.val_images)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PoseError(f"no image file under {root}")
    transform = eval_transform(cfg.data.image_size, cfg.data.val_resize)
    # Every class, not the first one's only: the files taken round-robin over the folders.
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    queues = list(by_folder.values())
    while any(queues):
        for queue in queues:
            if queue:
                yield transform(load_image(str(queue.pop(0))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=32, help="validation crops to use")
    parser.add_argument("--points", type=int, default=3000, help="points drawn per panel")
    parser.add_argument("--image-folder", help="a classifier's images (searched recursively; "
                        "default: data.val_images)")
    parser.add_argument("--out", help="PNG path (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if not activation_name(cfg.model.backbone.act).startswith("dyrelu"):
        raise PoseError(f"the backbone's activation is {cfg.model.backbone.act!r}, not DY-ReLU: "
                        f"a static activation has no dynamics to plot")
    device = resolve_device(cfg)
    model = model_from_checkpoint(cfg, args.checkpoint, device)
    classifier = cfg.model.type == "classifier"
    layers = depthwise_activations(model if classifier else model.backbone)
    samples: dict[str, list] = {name: [] for name, _ in layers}
    rng = np.random.default_rng(0)

    def recorder(name):
        def hook(_module, inputs, output):
            x, y = inputs[0].detach().flatten().cpu(), output.detach().flatten().cpu()
            pick = torch.from_numpy(rng.choice(x.numel(), min(x.numel(), args.points),
                                               replace=False))
            samples[name].append((x[pick].numpy(), y[pick].numpy()))
        return hook

    hooks = [module.register_forward_hook(recorder(name)) for name, module in layers]
    images = classifier_images(cfg, args.image_folder) if classifier else \
        (item["image"] for item in build_dataset(cfg, train=False, use_gt_boxes=True))
    count = 0
    with torch.no_grad():
        batch = []
        for image in images:
            batch.append(image)
            count += 1
            if len(batch) == 16 or count == args.images:
                model(torch.stack(batch).to(device))
                batch = []
            if count == args.images:
                break
        if batch:
            model(torch.stack(batch).to(device))
    for hook in hooks:
        hook.remove()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(layers) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    for ax, (name, _) in zip(axes.flat, layers):
        x = np.concatenate([s[0] for s in samples[name]])
        y = np.concatenate([s[1] for s in samples[name]])
        keep = rng.choice(len(x), min(len(x), args.points), replace=False)
        ax.scatter(x[keep], y[keep], s=2, alpha=0.4, color="tab:blue")
        limit = float(np.percentile(np.abs(x), 99.5)) or 1.0
        line = np.array([-limit, limit])
        ax.plot(line, line, "r-", lw=1)
        ax.plot(line, -line, "r-", lw=1)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("input x")
        ax.set_ylabel("output y")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle(f"DY-ReLU input vs output after the depthwise conv "
                 f"({cfg.model.backbone.act}), {count} validation "
                 f"{'images' if classifier else 'crops'}")
    fig.tight_layout()
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("dynamics.png")
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run(main)
