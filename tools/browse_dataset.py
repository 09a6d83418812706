"""Write augmented training crops with their keypoints and skeleton drawn: what the model sees.

    python tools/browse_dataset.py --config configs/synthetic/mobilenetv2_x0.5_160x128.yaml \
        --out work_dirs/browse --count 16 [--val]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from pose.cli import add_config_arguments, config_from_args, run
from pose.data.build import build_dataset
from pose.data.coco import denormalize
from pose.vis import draw_skeletons


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the pictures")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--epoch", type=int, default=0, help="augmentation epoch")
    parser.add_argument("--val", action="store_true", help="evaluation crops instead")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    dataset = build_dataset(cfg, train=not args.val)
    dataset.set_epoch(args.epoch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codec = dataset.codec
    for index in range(min(args.count, len(dataset))):
        item = dataset[index]
        crop = denormalize(item["image"])
        coords, peaks = codec.decode(item["heatmaps"][None].numpy())  # targets, crop pixels
        keypoints = np.concatenate([coords[0], (item["weights"].numpy() * peaks[0])[:, None]], 1)
        picture = draw_skeletons(crop, keypoints[None], score_threshold=0.5, width=1, radius=2,
                                 keypoint_set=dataset.keypoint_set)
        heat = item["heatmaps"].numpy().max(0)
        heat = cv2.resize((heat * 255).astype(np.uint8), (crop.shape[1], crop.shape[0]))
        heat = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[..., ::-1]
        panel = np.concatenate([picture, heat], axis=1)
        name = f"{index:04d}_img{item['image_id']}{'_flip' if item['flipped'] else ''}.png"
        cv2.imwrite(str(out / name), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    print(f"wrote {min(args.count, len(dataset))} crops to {out}")
    return 0


if __name__ == "__main__":
    run(main)
