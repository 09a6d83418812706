"""Parameters and MAdds of the model a config builds (convention: pose/complexity.py).

    python tools/complexity.py --config configs/coco/mobilenetv2_x0.5_256x192.yaml
    python tools/complexity.py --config configs/imagenet/mobilenetv2_x1.0_cls.yaml \
        --set model.backbone.act=dyrelu_b --json
"""
from __future__ import annotations

import argparse
import json

from pose.cli import add_config_arguments, config_from_args, run
from pose.complexity import complexity
from pose.models import build_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    height, width = cfg.data.image_size if cfg.model.type == "classifier" else cfg.data.input_size
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


if __name__ == "__main__":
    run(main)
