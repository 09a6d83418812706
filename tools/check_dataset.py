"""Check a config's COCO-format keypoint files (and their images) before any work starts.

    python tools/check_dataset.py --config CONFIG [--split train|val|both]
    python tools/check_dataset.py --ann-file person_keypoints.json [--images DIR]

The same pass that training, testing and the demo run at load time (pose/data/validate.py):
a fault is one line naming the file, the entry and the field (exit 2); otherwise a summary
of images, people, labelled joints per keypoint, labelled keypoints outside their box and
what was repaired or skipped. Every image file is looked up and checked whole (its format's
end marker; a truncated JPEG is named). A training file without a usable person is a fault.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pose.cli import run
from pose.config import load_config
from pose.data.build import data_path
from pose.data.coco import load_keypoint_file, read_detection_file
from pose.errors import PoseError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="check the config's data files")
    source.add_argument("--ann-file", help="check one COCO keypoint file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (with --config)")
    parser.add_argument("--split", choices=("train", "val", "both"), default="both")
    parser.add_argument("--images", help="with --ann-file: the image folder to look up")
    parser.add_argument("--oks-sigmas", help="with --ann-file: comma-separated OKS sigmas of a "
                        "keypoint set other than COCO's")
    parser.add_argument("--skip-damaged-images", action="store_true",
                        help="count truncated image files instead of stopping at the first "
                             "(data.skip_damaged_images with --config)")
    args = parser.parse_args(argv)
    if args.config:
        cfg = load_config(args.config, args.overrides)
        d = cfg.data
        files = [(data_path(cfg, d.train_ann), data_path(cfg, d.train_images), True)] \
            if args.split in ("train", "both") else []
        files += [(data_path(cfg, d.val_ann), data_path(cfg, d.val_images), False)] \
            if args.split in ("val", "both") else []
        sigmas, skip = d.oks_sigmas, d.skip_damaged_images or args.skip_damaged_images
    else:
        files = [(Path(args.ann_file), Path(args.images) if args.images else None, True)]
        skip = args.skip_damaged_images
        try:
            sigmas = [float(v) for v in args.oks_sigmas.split(",")] if args.oks_sigmas else None
        except ValueError:
            raise PoseError(f"--oks-sigmas {args.oks_sigmas!r} is not a list of numbers") \
                from None
    for ann_file, image_dir, for_training in files:
        if image_dir is not None and not image_dir.is_dir():
            raise PoseError(f"image folder not found: {image_dir}")
        coco, report = load_keypoint_file(ann_file, image_dir, sigmas, skip)
        print(report.summary())
        if image_dir is None:
            print("  image files not looked up (give --images)")
        if for_training and not report.people:
            raise PoseError(f"{ann_file} has no usable person to train on ({report.annotations} "
                            f"annotations)")
    if args.config and args.split in ("val", "both") and not cfg.eval.use_gt_boxes:
        if not cfg.data.det_file:
            raise PoseError("data.det_file is null: evaluation on detector boxes has none; "
                            "set it, or eval.use_gt_boxes: true")
        det_file = data_path(cfg, cfg.data.det_file)
        detections = read_detection_file(det_file, cfg.data.det_score_threshold,
                                         set(coco.imgs))
        print(f"{det_file}: {len(detections)} person boxes with score >= "
              f"{cfg.data.det_score_threshold}")
    return 0


if __name__ == "__main__":
    run(main)
