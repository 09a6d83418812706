"""Parameters and MAdds of the model a config builds (convention: pose/complexity.py).

    python tools/complexity.py --config configs/coco/mobilenetv2_x0.5_256x192.yaml
    python tools/complexity.py --config configs/imagenet/mobilenetv2_x1.0_cls.yaml \
        --set model.backbone.act=dyrelu_b --json
    python tools/complexity.py --config configs/imagenet/mobilenetv2_x1.0_cls.yaml --table1
"""
from __future__ import annotations

import argparse
import json

from pose.cli import add_config_arguments, config_from_args, run
from pose.errors import PoseError
from pose.complexity import TABLE1_TOLERANCE, complexity, table1
from pose.models import build_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--table1", action="store_true",
                        help="the paper's Table 1: ten activations in a classifier config's "
                             "model, ours beside the paper's")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    height, width = cfg.data.image_size if cfg.model.type == "classifier" else cfg.data.input_size
    if args.table1:
        return print_table1(cfg, (height, width), args.json)
    model = build_model(cfg.model)
    result = complexity(model, (1, 3, height, width))
    result["input_size"] = [height, width]
    print(f"model: {cfg.model.type}, backbone act {cfg.model.backbone.act}, "
          f"input {height}x{width}")
    print(f"params: {result['params'] / 1e6:.3f}M  MAdds: {result['madds'] / 1e6:.1f}M")
    if cfg.model.type == "pose":
        print(f"  head act {cfg.model.head.act}")
        for part in ("backbone", "head"):
            n = sum(p.numel() for p in getattr(model, part).parameters())
            result[f"{part}_params"] = n
            print(f"  {part} params: {n / 1e6:.3f}M")
    if args.json:
        print(json.dumps(result))
    return 0


def print_table1(cfg, image_size, as_json: bool) -> int:
    if cfg.model.type != "classifier":
        raise PoseError(f"--table1 needs a classifier config (model.type: classifier), such "
                        f"as configs/imagenet/mobilenetv2_x1.0_cls.yaml; got {cfg.model.type!r}")
    rows = table1(cfg.model, image_size)
    print(f"Table 1: MobileNetV2 x{cfg.model.backbone.width_mult} at "
          f"{image_size[0]}x{image_size[1]}, ours / paper (ok: both within "
          f"{TABLE1_TOLERANCE:.0%})")
    print(f"{'activation':<24}{'params':>9}{'paper':>7}{'ratio':>7}{'MAdds':>9}{'paper':>8}"
          f"{'ratio':>7}  ok")
    for r in rows:
        print(f"{r['row']:<24}{r['params'] / 1e6:>8.3f}M{r['paper_params'] / 1e6:>6.1f}M"
              f"{r['params_ratio']:>7.3f}{r['madds'] / 1e6:>8.1f}M{r['paper_madds'] / 1e6:>7.1f}M"
              f"{r['madds_ratio']:>7.3f}  {'yes' if r['within'] else 'NO'}")
    if as_json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    run(main)
