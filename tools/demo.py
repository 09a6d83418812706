"""Draw predicted skeletons on images and videos; write the predictions as COCO keypoint results.

    python tools/demo.py --config CONFIG --checkpoint best.pth --input IMG_DIR_OR_VIDEO --out DIR \
        [--recursive] [--det-file F [--ann-file A] | --boxes "x,y,w,h;..." | --whole-image |
         --detector torchvision --detector-weights PATH]

Each input keeps its name under --out (a.jpg -> DIR/a.jpg and DIR/a.jpg.json); a video gives
an annotated MPEG-4 video and one JSON of per-frame results. The poses come from the
evaluation's own path (pose.estimator.PoseEstimator) with the config's settings.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pose.cli import add_config_arguments, config_from_args, run
from pose.demo import (DetectionFile, TorchvisionPersonDetector, annotate_video, draw,
                       is_video, list_inputs, output_paths, parse_boxes, whole_image,
                       write_picture)
from pose.data.coco import read_rgb
from pose.errors import DataError, PoseError
from pose.estimator import PoseEstimator, resolve_device
from pose.utils import atomic_write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True,
                        help="an image, a video, or a folder of images and videos")
    parser.add_argument("--recursive", action="store_true", help="also the input folder's "
                        "subfolders (their structure is kept under --out)")
    parser.add_argument("--out", required=True, help="folder for pictures, videos and JSON")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--det-file", help="COCO detection results with person boxes (images)")
    boxes.add_argument("--boxes", help="'x,y,w,h;...' person boxes for every image or frame")
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
    if args.ann_file and not args.det_file:
        raise PoseError("--ann-file maps file names to image ids for --det-file; give both")
    inputs = list_inputs(args.input, args.recursive)
    root, out = Path(args.input), Path(args.out)
    if out.exists() and not out.is_dir():
        raise PoseError(f"--out {out} is a file; the demo writes a folder of pictures and JSON")
    if any(out.resolve() == p.parent.resolve() for p in inputs):
        raise PoseError(f"--out {out} is the input folder: the pictures would overwrite the "
                        f"inputs; choose another folder")
    detections = DetectionFile(args.det_file, args.box_threshold, args.ann_file) \
        if args.det_file else None
    if detections and any(is_video(p) for p in inputs):
        video = next(p for p in inputs if is_video(p))
        raise PoseError(f"--det-file gives boxes per image id, not per video frame ({video}): "
                        f"use --boxes, --whole-image or --detector for videos")
    estimator = PoseEstimator.from_checkpoint(cfg, args.checkpoint,
                                              flip_test=cfg.eval.flip_test and not args.no_flip)
    detector = TorchvisionPersonDetector(args.detector_weights, resolve_device(cfg),
                                         args.box_threshold) \
        if args.detector else None
    fixed = parse_boxes(args.boxes) if args.boxes else None

    def boxes_of(image, path=None):
        if detections:
            return detections.boxes(path)
        if detector:
            return detector(image)
        return fixed if fixed else whole_image(image)

    from tqdm import tqdm

    pictures, videos, skipped = 0, 0, []
    images = [p for p in inputs if not is_video(p)]
    # Image ids first: a file name that two images share is refused before any inference.
    image_ids = {}
    for index, path in enumerate(images):
        try:
            image_ids[path] = detections.image_id(path) if detections else index
        except DataError as error:
            skipped.append(f"{path}: {error}")
    for path in tqdm([p for p in images if p in image_ids], desc="demo",
                     disable=len(images) < 2):
        try:
            image = read_rgb(path)
            boxes = boxes_of(image, path)
        except DataError as error:
            skipped.append(f"{path}: {error}")
            continue
        image_id = image_ids[path]
        people = estimator(image, boxes, image_id)
        if not people:
            print(f"{path}: no person ({len(boxes)} box(es) given, none kept)")
        picture_out, json_out = output_paths(path, root, out)
        write_picture(draw(image, people, estimator, boxes, args.kpt_threshold,
                           args.draw_boxes), picture_out)
        atomic_write_json(json_out, people)
        pictures += 1
    for path in (p for p in inputs if is_video(p)):
        video_out, json_out = output_paths(path, root, out)
        frames, seconds = annotate_video(path, video_out, json_out, estimator, boxes_of,
                                         args.kpt_threshold, args.draw_boxes)
        print(f"{path}: {frames} frames at {frames / max(seconds, 1e-9):.1f} frames/s -> "
              f"{video_out}, {json_out}")
        videos += 1
    for line in skipped:
        print(f"skipped {line}")
    print(f"wrote {pictures} picture(s)" + (f" and {videos} video(s)" if videos else "")
          + f" with their JSON results to {out}"
          + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""))
    return 0 if pictures or videos or not inputs else 1


if __name__ == "__main__":
    run(main)
