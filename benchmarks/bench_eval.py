"""Evaluation cost for ~100k person detections, split into decode, OKS-NMS and pycocotools.

Builds a COCO-sized problem in memory: 5,000 images with 20 detections each (ground truth of
6 people per image, predictions = ground truth + noise, plus extras), heatmaps made by the
codec for the decode stage (processed in chunks, as an evaluation loop would).

    python benchmarks/bench_eval.py [--images 5000] [--per-image 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from pycocotools.coco import COCO

from pose.data.heatmap import HeatmapCodec
from pose.evaluation.coco_eval import evaluate_results, make_results


def synthetic_problem(images: int, per_image: int, rng: np.random.Generator):
    gt_people = 6
    image_records, annotations = [], []
    for i in range(images):
        image_records.append({"id": i + 1, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        for _ in range(gt_people):
            x, y = rng.uniform(0, 500), rng.uniform(0, 300)
            w, h = rng.uniform(40, 140), rng.uniform(80, 180)
            k = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17),
                          np.full(17, 2)], 1)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "iscrowd": 0, "bbox": [x, y, w, h], "area": w * h * 0.6,
                                "keypoints": k.reshape(-1).tolist(), "num_keypoints": 17})
    coco = COCO()
    coco.dataset = {"images": image_records, "annotations": annotations,
                    "categories": [{"id": 1, "name": "person"}]}
    coco.createIndex()
    # per_image predictions per image: each GT person several times with noise.
    by_image = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    keypoints, image_ids, areas = [], [], []
    for image_id, anns in by_image.items():
        for j in range(per_image):
            ann = anns[j % len(anns)]
            k = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            k[:, :2] += rng.normal(0, 4 + j, (17, 2))
            k[:, 2] = rng.uniform(0.1, 1.0, 17)
            keypoints.append(k)
            image_ids.append(image_id)
            areas.append(ann["bbox"][2] * ann["bbox"][3] * 1.56)
    n = len(keypoints)
    predictions = {"keypoints": np.stack(keypoints), "image_ids": np.array(image_ids),
                   "box_scores": rng.uniform(0.3, 1.0, n), "areas": np.array(areas),
                   "indices": np.arange(n)}
    return coco, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    coco, predictions = synthetic_problem(args.images, args.per_image, rng)
    n = len(predictions["keypoints"])
    codec = HeatmapCodec((256, 192))
    # One chunk of heatmaps, encoded once and decoded once per chunk of the n detections.
    crops = rng.uniform([8, 8], [184, 248], (args.chunk, 17, 2))
    heatmaps = np.stack([codec.encode(k, np.ones(17))[0] for k in crops])
    start = time.perf_counter()
    for first in range(0, n, args.chunk):
        codec.decode(heatmaps[: min(args.chunk, n - first)])
    decode = time.perf_counter() - start
    start = time.perf_counter()
    results = make_results(predictions, 0.2, 0.9)
    nms = time.perf_counter() - start
    start = time.perf_counter()
    stats = evaluate_results(coco, results)
    cocoeval = time.perf_counter() - start
    total = decode + nms + cocoeval
    print(f"{n} detections on {args.images} images; {len(results)} kept by OKS-NMS; "
          f"AP {stats['AP']:.3f}")
    for name, seconds in (("decode (argmax + quarter offset)", decode),
                          ("rescoring + OKS-NMS", nms), ("pycocotools COCOeval", cocoeval)):
        print(f"{name:>34}: {seconds:7.2f} s ({seconds / total:5.1%})")
    print(f"{'total':>34}: {total:7.2f} s")


if __name__ == "__main__":
    main()
