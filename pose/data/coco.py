"""Top-down COCO keypoint dataset: one sample per person box.

Boxes come from the ground truth (training, or evaluation with GT boxes) or from a detector
results file (evaluation). Image ids are read from the annotation file, never from file names.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from pose.data.heatmap import HeatmapCodec
from pose.config import REFERENCE_UPPER_BODY_PROB
from pose.data.transforms import (apply_affine, box_to_center_scale, crop_matrix,
                                  half_body_center_scale, invert_affine, rotation_angle, warp)
from pose.data.validate import DataReport, check_detections, check_keypoint_file
from pose.errors import DataError, DataWarning

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
PERSON_CATEGORY = 1


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's content; errors name the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a JSON file")
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path} is not valid JSON: {error}") from None


def load_keypoint_file(path: str | Path, image_dir: Optional[str | Path] = None,
                       sigmas: Optional[Sequence[float]] = None,
                       skip_damaged_images: bool = False) -> tuple[COCO, DataReport]:
    """A COCO keypoint file, checked (``pose.data.validate``; with ``image_dir``, every image
    file looked up and checked whole) and indexed by pycocotools. What was repaired or skipped
    is one warning."""
    path = Path(path)
    data = read_json(path, "annotation file")
    report = check_keypoint_file(path, data, Path(image_dir) if image_dir else None, sigmas,
                                 skip_damaged_images)
    if report.warning():
        warnings.warn(report.warning(), DataWarning)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, report


def load_coco(path: str | Path) -> COCO:
    """A checked COCO keypoint file, indexed by pycocotools."""
    return load_keypoint_file(path)[0]


def read_detection_file(path: str | Path, score_threshold: float = 0.0,
                        image_ids=None, category_id: int = PERSON_CATEGORY) -> list[dict]:
    """Person detections (``image_id``, ``bbox`` x, y, w, h, ``score``) of a COCO detection
    results file with a score of at least ``score_threshold``; every entry is checked (and
    its image id against ``image_ids`` when given), errors name the file and the entry."""
    detections = read_json(path, "detection file")
    check_detections(Path(path), detections, image_ids)
    return [d for d in detections if d.get("category_id", category_id) == category_id
            and d["score"] >= score_threshold]


@dataclass
class Augmentation:
    """Training augmentation settings (all off for evaluation); the defaults are the
    reference's (SimpleBaselines/HRNet), which has no colour jitter."""
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_upper_prob: float = REFERENCE_UPPER_BODY_PROB
    half_body_centre: str = "mean"  # of the chosen joints; "box": the middle of their extent
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_clip: float = 2.0  # angles are N(0, factor) clipped to +-clip * factor
    rotation_prob: float = 0.6
    photometric: bool = False


def photometric_jitter():
    """The colour jitter of training (albumentations), imported here: the package takes about
    a second to import, which processes that never train with it should not pay."""
    import albumentations as A

    return A.Compose([
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.5),
    ])


def croppable(box, drop_zero_size: bool) -> bool:
    """Whether an (x, y, w, h) box has a crop. The reference keeps a box of zero width or
    height (its crop then takes its size from the other side); ``drop_zero_size`` drops it.
    A box of neither width nor height, or of negative size, has no crop in either rule."""
    w, h = box[2], box[3]
    if drop_zero_size:
        return w > 0 and h > 0
    return w >= 0 and h >= 0 and (w > 0 or h > 0)


def clip_box(box, width: int, height: int,
             drop_zero_size: bool = False) -> Optional[tuple[float, float, float, float]]:
    """Clip an (x, y, w, h) box to the image (the last pixel is width - 1); None when it has
    no crop (``croppable``).

    The reference's cleaning of ground-truth boxes (SimpleBaselines/HRNet), applied to them
    always and to detector boxes only with ``clip_detection_boxes``."""
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1.0)), min(height - 1.0, y1 + max(0.0, h - 1.0))
    clipped = (x1, y1, x2 - x1, y2 - y1)
    return clipped if croppable(clipped, drop_zero_size) else None


@dataclass(frozen=True)
class CropSettings:
    """How a person box becomes a model input: the training and evaluation crops, also the
    demo's and the Python API's (``pose.estimator``), so that they cannot drift apart. Made
    from a config by ``pose.data.build.crop_settings``.

    Ground-truth boxes are clipped to the image, as the reference does; detector boxes are
    cropped as given (the reference and mmpose crop from the raw box, also where it crosses
    the image border) unless ``clip_detection_boxes``. ``drop_zero_size_boxes``: see
    ``croppable``."""
    input_size: tuple[int, int]  # crop (height, width)
    padding: float = 1.25
    crop_geometry: str = "reference"
    clip_detection_boxes: bool = False
    drop_zero_size_boxes: bool = False

    def _center_scale(self, box):
        height, width = self.input_size
        return box_to_center_scale(box, width / height, self.padding)

    def gt_center_scale(self, box, image_width: int, image_height: int):
        """(centre, scale) of a ground-truth box's crop, or None for a box without a crop."""
        box = clip_box(box, image_width, image_height, self.drop_zero_size_boxes)
        return None if box is None else self._center_scale(box)

    def detection_center_scale(self, box, image_width: int, image_height: int):
        """(centre, scale) of a detector box's crop, or None for a box without a crop."""
        if self.clip_detection_boxes:
            return self.gt_center_scale(box, image_width, image_height)
        box = tuple(float(v) for v in box)
        return self._center_scale(box) if croppable(box, self.drop_zero_size_boxes) else None

    def crop(self, image: np.ndarray, center, scale, rotation: float = 0.0,
             flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 crop, 2x3 matrix image pixels -> crop pixels)."""
        height, width = self.input_size
        matrix = crop_matrix(center, scale, rotation, (width, height), flip, self.crop_geometry)
        return warp(image, matrix, (width, height)), matrix


class TopDownCocoDataset(Dataset):
    """Args:
        ann_file: COCO person-keypoint annotation file.
        image_dir: folder the annotation's ``file_name`` entries are relative to.
        codec: heatmap codec (fixes the crop size and heatmap size).
        train: training mode (GT boxes, augmentation) or evaluation mode.
        det_file: evaluation boxes from this detection results file instead of GT boxes.
        sigmas: OKS sigmas of a keypoint set other than COCO's (``data.oks_sigmas``).
        crops: how boxes become crops (default: the reference's, at the codec's input size).
        skip_damaged_images: leave out image files that are truncated or not images (and
            their people) with a warning, instead of refusing the file.
        augmentation: training augmentation settings.
        seed: base seed; sample i of epoch e is augmented with a generator seeded by
            (seed, e, i), so results do not depend on worker count or order.

    The file is checked before anything else (``pose.data.validate``); its keypoint
    category fixes the keypoint set (``keypoint_set``: names, skeleton, flip pairs, sigmas).

    A sample is a dict: ``image`` (3, H, W) normalised float tensor, ``heatmaps`` (K, h, w),
    ``weights`` (K,), ``inv_matrix`` (2, 3) crop pixels -> image pixels, ``image_id``,
    ``score`` (box score, 1 for GT), ``area`` (box area in image pixels), ``index``,
    ``flipped`` (whether the crop was mirrored; its joints are then left/right swapped).
    """

    def __init__(self, ann_file, image_dir, codec: HeatmapCodec, train: bool = False,
                 det_file: Optional[str] = None, det_score_threshold: float = 0.0,
                 augmentation: Optional[Augmentation] = None,
                 crops: Optional[CropSettings] = None, seed: int = 0,
                 sigmas: Optional[Sequence[float]] = None,
                 skip_damaged_images: bool = False) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        folder = self.image_dir.is_dir()
        self.coco, self.report = load_keypoint_file(ann_file, image_dir if folder else None,
                                                    sigmas, skip_damaged_images)
        if not folder:
            raise DataError(f"image folder not found: {self.image_dir}")
        self.keypoint_set = self.report.keypoint_set
        self.flip_perm = self.keypoint_set.flip_permutation()
        self.codec, self.train, self.seed = codec, train, seed
        self.crops = crops or CropSettings(tuple(codec.input_size))
        if tuple(self.crops.input_size) != tuple(codec.input_size):
            raise ValueError(f"crop size {self.crops.input_size} differs from the codec's "
                             f"{codec.input_size}")
        self.augmentation = (augmentation or Augmentation()) if train else None
        height, width = codec.input_size
        self.aspect_ratio = width / height
        self.epoch = 0
        self.det_source = str(det_file) if det_file and not train else None
        self.samples = (self._detection_samples(det_file, det_score_threshold)
                        if det_file and not train else self._gt_samples())
        self.photometric = (photometric_jitter()
                            if train and self.augmentation.photometric else None)

    def _image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def _gt_samples(self) -> list[dict]:
        samples, count = [], len(self.keypoint_set)
        for image_id, image in self.coco.imgs.items():
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann["iscrowd"] or ann["category_id"] != self.keypoint_set.category_id:
                    continue
                keypoints = np.array(ann["keypoints"], dtype=np.float64).reshape(count, 3)
                if keypoints[:, 2].max() <= 0:
                    continue
                crop = self.crops.gt_center_scale(ann["bbox"], image["width"], image["height"])
                if crop is None or ann["area"] <= 0:
                    continue
                center, scale = crop
                samples.append(dict(image_id=image_id, center=center, scale=scale, score=1.0,
                                    keypoints=keypoints))
        return samples

    def _detection_samples(self, det_file, score_threshold) -> list[dict]:
        samples = []
        for det in read_detection_file(det_file, score_threshold, set(self.coco.imgs),
                                       self.keypoint_set.category_id):
            image = self.coco.imgs[det["image_id"]]
            crop = self.crops.detection_center_scale(det["bbox"], image["width"],
                                                     image["height"])
            if crop is None:
                continue
            samples.append(dict(image_id=det["image_id"], center=crop[0], scale=crop[1],
                                score=float(det["score"]),
                                keypoints=np.zeros((len(self.keypoint_set), 3))))
        return samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, image_id: int) -> np.ndarray:
        return read_rgb(self._image_path(image_id))

    def _augment(self, sample: dict, rng: np.random.Generator):
        aug = self.augmentation
        center, scale = sample["center"].copy(), sample["scale"].copy()
        keypoints = sample["keypoints"]
        visible = keypoints[:, 2] > 0
        if visible.sum() > 8 and rng.random() < aug.half_body_prob:
            half = half_body_center_scale(keypoints, visible, self.aspect_ratio, rng,
                                          self.keypoint_set.upper_body,
                                          self.keypoint_set.lower_body,
                                          upper_prob=aug.half_body_upper_prob,
                                          centre=aug.half_body_centre)
            if half is not None:
                center, scale = half
        scale = scale * (1.0 + np.clip(rng.standard_normal(), -1, 1) * aug.scale_factor)
        rotation = 0.0
        if rng.random() < aug.rotation_prob:
            rotation = rotation_angle(rng.standard_normal(), aug.rotation_factor,
                                      aug.rotation_clip)
        flip = bool(rng.random() < aug.flip_prob)
        return center, scale, rotation, flip

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.read_image(sample["image_id"])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.train:
            center, scale, rotation, flip = self._augment(sample, rng)
        else:
            center, scale, rotation, flip = sample["center"], sample["scale"], 0.0, False
        crop, matrix = self.crops.crop(image, center, scale, rotation, flip)
        if self.photometric is not None:
            self.photometric.set_random_seed(int(rng.integers(2 ** 31)))
            crop = self.photometric(image=crop)["image"]

        keypoints = sample["keypoints"]
        crop_keypoints = apply_affine(keypoints[:, :2], matrix)
        visible = keypoints[:, 2].copy()
        if flip:
            crop_keypoints, visible = crop_keypoints[self.flip_perm], visible[self.flip_perm]
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


def read_rgb(path: Path) -> np.ndarray:
    """An image file's stored pixels as RGB uint8 (H, W, 3); a missing or corrupt file is one
    DataError.

    An EXIF orientation tag is ignored, as the reference reads images: COCO-format keypoints
    and boxes are annotated on the stored pixels, so a picture turned upright would no longer
    match them."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        reason = "missing" if not Path(path).exists() else "unreadable or corrupt"
        raise DataError(f"image file {path} is {reason}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def normalize(crop: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB crop -> (3, H, W) float tensor normalised with ImageNet statistics."""
    return torch.from_numpy(((crop.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)
                            .transpose(2, 0, 1).copy())


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 RGB."""
    array = image.detach().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(array, 0, 255).astype(np.uint8)

