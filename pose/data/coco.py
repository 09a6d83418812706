"""Top-down COCO keypoint dataset: one sample per person box.

Boxes come from the ground truth (training, or evaluation with GT boxes) or from a detector
results file (evaluation). Image ids are read from the annotation file, never from file names.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import albumentations as A
import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from pose.data.heatmap import HeatmapCodec
from pose.data.keypoints import NUM_KEYPOINTS, flip_permutation
from pose.data.transforms import (apply_affine, box_to_center_scale, crop_matrix,
                                  half_body_center_scale, invert_affine, warp)
from pose.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
PERSON_CATEGORY = 1


def load_coco(path: str | Path) -> COCO:
    """Load a COCO annotation file, with errors that name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path} is not in COCO format (top level is a "
                        f"{type(data).__name__}, not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {path} is not in COCO format: missing list "
                            f"'{key}'")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_detection_file(path: str | Path, score_threshold: float = 0.0) -> list[dict]:
    """Person detections (``image_id``, ``bbox`` x, y, w, h, ``score``) of a COCO detection
    results file with a score of at least ``score_threshold``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"detection file not found: {path}")
    try:
        detections = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"detection file {path} is not valid JSON: {error}") from None
    if not isinstance(detections, list):
        raise DataError(f"detection file {path} must hold a list of detections")
    for i, det in enumerate(detections):
        missing = {"image_id", "bbox", "score"} - set(det)
        if missing:
            raise DataError(f"detection file {path}: entry {i} lacks {', '.join(sorted(missing))}")
    return [d for d in detections if d.get("category_id", PERSON_CATEGORY) == PERSON_CATEGORY
            and d["score"] >= score_threshold]


def load_detections(path: str | Path, coco: COCO, score_threshold: float) -> list[dict]:
    """Person boxes from a COCO detection results file, checked against ``coco``'s images."""
    detections = read_detection_file(path, score_threshold)
    unknown = sorted({d["image_id"] for d in detections} - set(coco.imgs))
    if unknown:
        raise DataError(f"detection file {path} has image ids absent from the annotations: "
                        f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    return detections


@dataclass
class Augmentation:
    """Training augmentation settings (all off for evaluation)."""
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    photometric: bool = True


def clip_box(box, width: int, height: int) -> Optional[tuple[float, float, float, float]]:
    """Clip an (x, y, w, h) box to the image; None when nothing is left.

    The reference's cleaning of ground-truth boxes (SimpleBaselines/HRNet), applied to them
    always and to detector boxes only with ``clip_detection_boxes``."""
    x, y, w, h = box
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1.0)), min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2 - x1, y2 - y1


def detection_box(box, width: int, height: int,
                  clip: bool) -> Optional[tuple[float, float, float, float]]:
    """A detector's (x, y, w, h) box as it is cropped: as given (the reference and mmpose
    crop from the raw box, also where it crosses the image border) or clipped (``clip``);
    None for a box without area, which has no crop."""
    if clip:
        return clip_box(box, width, height)
    x, y, w, h = (float(v) for v in box)
    return (x, y, w, h) if w > 0 and h > 0 else None


class TopDownCocoDataset(Dataset):
    """Args:
        ann_file: COCO person-keypoint annotation file.
        image_dir: folder the annotation's ``file_name`` entries are relative to.
        codec: heatmap codec (fixes the crop size and heatmap size).
        train: training mode (GT boxes, augmentation) or evaluation mode.
        det_file: evaluation boxes from this detection results file instead of GT boxes.
        crop_geometry: where the box centre lands in the crop (``pose.data.transforms``).
        clip_detection_boxes: clip detector boxes to the image before cropping (GT boxes
            are always clipped, as the reference does).
        augmentation: training augmentation settings.
        seed: base seed; sample i of epoch e is augmented with a generator seeded by
            (seed, e, i), so results do not depend on worker count or order.

    A sample is a dict: ``image`` (3, H, W) normalised float tensor, ``heatmaps`` (K, h, w),
    ``weights`` (K,), ``inv_matrix`` (2, 3) crop pixels -> image pixels, ``image_id``,
    ``score`` (box score, 1 for GT), ``area`` (box area in image pixels), ``index``,
    ``flipped`` (whether the crop was mirrored; its joints are then left/right swapped).
    """

    def __init__(self, ann_file, image_dir, codec: HeatmapCodec, train: bool = False,
                 det_file: Optional[str] = None, det_score_threshold: float = 0.0,
                 augmentation: Optional[Augmentation] = None, padding: float = 1.25,
                 seed: int = 0, crop_geometry: str = "reference",
                 clip_detection_boxes: bool = False) -> None:
        self.coco = load_coco(ann_file)
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir}")
        self.codec, self.train, self.padding, self.seed = codec, train, padding, seed
        self.crop_geometry, self.clip_detection_boxes = crop_geometry, clip_detection_boxes
        self.augmentation = (augmentation or Augmentation()) if train else None
        height, width = codec.input_size
        self.aspect_ratio = width / height
        self.epoch = 0
        self.det_source = str(det_file) if det_file and not train else None
        self.samples = (self._detection_samples(det_file, det_score_threshold)
                        if det_file and not train else self._gt_samples())
        self.photometric = A.Compose([
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.5),
        ]) if train and self.augmentation.photometric else None

    def _image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def _gt_samples(self) -> list[dict]:
        samples = []
        for image_id, image in self.coco.imgs.items():
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0) or ann.get("category_id") != PERSON_CATEGORY:
                    continue
                keypoints = np.array(ann.get("keypoints", []), dtype=np.float64)
                if keypoints.size != NUM_KEYPOINTS * 3 or keypoints[2::3].max() <= 0:
                    continue
                box = clip_box(ann["bbox"], image["width"], image["height"])
                if box is None or ann.get("area", 1) <= 0:
                    continue
                center, scale = box_to_center_scale(box, self.aspect_ratio, self.padding)
                samples.append(dict(image_id=image_id, center=center, scale=scale, score=1.0,
                                    keypoints=keypoints.reshape(NUM_KEYPOINTS, 3)))
        return samples

    def _detection_samples(self, det_file, score_threshold) -> list[dict]:
        samples = []
        for det in load_detections(det_file, self.coco, score_threshold):
            image = self.coco.imgs[det["image_id"]]
            box = detection_box(det["bbox"], image["width"], image["height"],
                                self.clip_detection_boxes)
            if box is None:
                continue
            center, scale = box_to_center_scale(box, self.aspect_ratio, self.padding)
            samples.append(dict(image_id=det["image_id"], center=center, scale=scale,
                                score=float(det["score"]),
                                keypoints=np.zeros((NUM_KEYPOINTS, 3))))
        return samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, image_id: int) -> np.ndarray:
        path = self._image_path(image_id)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            reason = "missing" if not path.exists() else "unreadable or corrupt"
            raise DataError(f"image file {path} is {reason}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _augment(self, sample: dict, rng: np.random.Generator):
        aug = self.augmentation
        center, scale = sample["center"].copy(), sample["scale"].copy()
        keypoints = sample["keypoints"]
        visible = keypoints[:, 2] > 0
        if visible.sum() > 8 and rng.random() < aug.half_body_prob:
            half = half_body_center_scale(keypoints, visible, self.aspect_ratio, rng)
            if half is not None:
                center, scale = half
        scale = scale * (1.0 + np.clip(rng.standard_normal(), -1, 1) * aug.scale_factor)
        rotation = 0.0
        if rng.random() < aug.rotation_prob:
            rotation = float(np.clip(rng.standard_normal(), -1, 1) * aug.rotation_factor)
        flip = bool(rng.random() < aug.flip_prob)
        return center, scale, rotation, flip

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.read_image(sample["image_id"])
        height, width = self.codec.input_size
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.train:
            center, scale, rotation, flip = self._augment(sample, rng)
        else:
            center, scale, rotation, flip = sample["center"], sample["scale"], 0.0, False
        matrix = crop_matrix(center, scale, rotation, (width, height), flip, self.crop_geometry)
        crop = warp(image, matrix, (width, height))
        if self.photometric is not None:
            self.photometric.set_random_seed(int(rng.integers(2 ** 31)))
            crop = self.photometric(image=crop)["image"]

        keypoints = sample["keypoints"]
        crop_keypoints = apply_affine(keypoints[:, :2], matrix)
        visible = keypoints[:, 2].copy()
        if flip:
            perm = flip_permutation(len(keypoints))
            crop_keypoints, visible = crop_keypoints[perm], visible[perm]
        heatmaps, weights = self.codec.encode(crop_keypoints, visible)

        return {
            "image": normalize(crop),
            "heatmaps": torch.from_numpy(heatmaps),
            "weights": torch.from_numpy(weights),
            "inv_matrix": torch.from_numpy(invert_affine(matrix)),
            "image_id": sample["image_id"],
            "score": sample["score"],
            "area": float(scale[0] * scale[1]),
            "index": index,
            "flipped": flip,
        }


def normalize(crop: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB crop -> (3, H, W) float tensor normalised with ImageNet statistics."""
    return torch.from_numpy(((crop.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)
                            .transpose(2, 0, 1).copy())


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 RGB."""
    array = image.detach().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(array, 0, 255).astype(np.uint8)

