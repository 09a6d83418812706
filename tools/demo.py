"""Draw predicted skeletons on images and write the predictions as COCO keypoint results.

    python tools/demo.py --config CONFIG --checkpoint best.pth --input IMG_OR_DIR --out DIR \
        [--det-file F [--ann-file A] | --boxes "x,y,w,h;..." | --whole-image |
         --detector torchvision --detector-weights PATH]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from pose.cli import add_config_arguments, config_from_args, run
from pose.data.build import make_codec
from pose.data.keypoints import NUM_KEYPOINTS
from pose.demo import (DetectionFile, TorchvisionPersonDetector, list_images, parse_boxes,
                       predict_people, read_rgb)
from pose.engine.inference import model_heatmaps
from pose.engine.runner import AMP_DTYPES, model_from_checkpoint, resolve_device
from pose.errors import DataError
from pose.utils import atomic_write, atomic_write_json
from pose.vis import draw_skeletons


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--out", required=True, help="folder for pictures and JSON files")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--det-file", help="COCO detection results with person boxes")
    boxes.add_argument("--boxes", help="'x,y,w,h;...' person boxes for every image")
    boxes.add_argument("--whole-image", action="store_true", help="one person: the whole "
                       "image (the default when no boxes are given)")
    boxes.add_argument("--detector", choices=("torchvision",),
                       help="run torchvision's Faster R-CNN (needs --detector-weights)")
    parser.add_argument("--ann-file", help="with --det-file: map file names to image ids")
    parser.add_argument("--detector-weights", help="local fasterrcnn_resnet50_fpn weights")
    parser.add_argument("--box-threshold", type=float, default=0.5,
                        help="minimum person box score (detections)")
    parser.add_argument("--kpt-threshold", type=float, default=0.3,
                        help="keypoints at or below this score are not drawn")
    parser.add_argument("--draw-boxes", action="store_true")
    parser.add_argument("--no-flip", action="store_true")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    device = resolve_device(cfg)
    images = list_images(args.input)
    model = model_from_checkpoint(cfg, args.checkpoint, device)
    heatmap_fn = model_heatmaps(model, device, cfg.eval.flip_test and not args.no_flip,
                                cfg.eval.shift_heatmap, AMP_DTYPES[cfg.train.amp])
    codec = make_codec(cfg)
    detections = DetectionFile(args.det_file, args.box_threshold, args.ann_file) \
        if args.det_file else None
    detector = TorchvisionPersonDetector(args.detector_weights, device, args.box_threshold) \
        if args.detector else None
    fixed = parse_boxes(args.boxes) if args.boxes else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    written, skipped = 0, []
    for index, path in enumerate(tqdm(images, desc="demo", disable=len(images) < 2)):
        try:
            image = read_rgb(path)
            image_id = detections.image_id(path) if detections else index
            if detections:
                boxes = detections.boxes(path)
            elif detector:
                boxes = detector(image)
            elif fixed:
                boxes = fixed
            else:
                boxes = [([0.0, 0.0, float(image.shape[1]), float(image.shape[0])], 1.0)]
        except DataError as error:
            skipped.append(f"{path}: {error}")
            continue
        results = predict_people(heatmap_fn, image, boxes, codec, image_id,
                                 nms_threshold=cfg.eval.oks_nms_threshold,
                                 keypoint_score_threshold=cfg.eval.keypoint_score_threshold,
                                 padding=cfg.data.padding, crop_geometry=cfg.data.crop_geometry,
                                 clip_boxes=cfg.data.clip_detection_boxes)
        keypoints = np.array([r["keypoints"] for r in results]).reshape(-1, NUM_KEYPOINTS, 3)
        box_array = np.array([b for b, _ in boxes]) if args.draw_boxes and boxes else None
        picture = draw_skeletons(image, keypoints, args.kpt_threshold, box_array)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        if not ok:
            raise DataError(f"could not encode the picture for {path} as JPEG")
        atomic_write(out / f"{path.stem}.jpg", lambda f: f.write(encoded.tobytes()), mode="wb")
        atomic_write_json(out / f"{path.stem}.json", results)
        written += 1
    for line in skipped:
        print(f"skipped {line}")
    print(f"wrote {written} picture(s) and JSON file(s) to {out}"
          + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""))
    return 0 if written or not images else 1


if __name__ == "__main__":
    run(main)
