"""Inference on plain images: person boxes -> crops -> heatmaps -> COCO-format keypoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from pose.data.coco import detection_box, normalize, read_detection_file
from pose.data.heatmap import HeatmapCodec
from pose.data.transforms import box_to_center_scale, crop_matrix, invert_affine, warp
from pose.engine.inference import HeatmapFn, predict
from pose.errors import DataError, PoseError
from pose.evaluation.coco_eval import make_results

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    raise DataError(f"input not found: {path}")


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image file {path} is unreadable or corrupt")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def parse_boxes(text: str) -> list[tuple[list[float], float]]:
    """'x,y,w,h;x,y,w,h' -> [(box, score 1.0), ...]."""
    boxes = []
    for part in text.split(";"):
        values = [v for v in part.split(",") if v.strip()]
        try:
            box = [float(v) for v in values]
        except ValueError:
            box = []
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
            raise PoseError(f"--boxes: {part!r} is not x,y,w,h with positive w and h")
        boxes.append((box, 1.0))
    return boxes


class DetectionFile:
    """Person boxes for images from a COCO detection results file.

    An image is matched by its ``file_name`` in ``ann_file`` when one is given, else by its
    file name's number (COCO's convention: 000000000785.jpg is image 785).
    """

    def __init__(self, det_file: str | Path, score_threshold: float,
                 ann_file: Optional[str | Path] = None) -> None:
        self.by_image: dict[int, list] = {}
        for det in read_detection_file(det_file, score_threshold):
            self.by_image.setdefault(det["image_id"], []).append((det["bbox"], det["score"]))
        self.ids = None
        if ann_file is not None:
            images = json.loads(Path(ann_file).read_text())["images"]
            self.ids = {image["file_name"]: image["id"] for image in images}

    def image_id(self, path: Path) -> int:
        if self.ids is not None:
            if path.name not in self.ids:
                raise DataError(f"{path.name} is not in the annotation file's images")
            return self.ids[path.name]
        if not path.stem.isdigit():
            raise DataError(f"cannot tell {path.name}'s image id: give --ann-file")
        return int(path.stem)

    def boxes(self, path: Path) -> list[tuple[list[float], float]]:
        return self.by_image.get(self.image_id(path), [])


class TorchvisionPersonDetector:
    """torchvision's Faster R-CNN (ResNet-50 FPN) with weights from a local file."""

    def __init__(self, weights: Optional[str], device: torch.device,
                 score_threshold: float = 0.5) -> None:
        if not weights or not Path(weights).is_file():
            raise PoseError(f"--detector torchvision needs --detector-weights PATH to an "
                            f"existing fasterrcnn_resnet50_fpn state dict (got {weights!r}); "
                            f"nothing is downloaded at run time")
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        self.model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.to(device).eval()
        self.device, self.score_threshold = device, score_threshold

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> list[tuple[list[float], float]]:
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(self.device)
        output = self.model([tensor])[0]
        keep = (output["labels"] == 1) & (output["scores"] >= self.score_threshold)
        boxes = output["boxes"][keep].cpu().numpy()
        scores = output["scores"][keep].cpu().numpy()
        return [([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], float(s))
                for (x1, y1, x2, y2), s in zip(boxes, scores)]


def person_crops(image: np.ndarray, boxes: Sequence[tuple[list[float], float]],
                 codec: HeatmapCodec, image_id: int, padding: float = 1.25,
                 crop_geometry: str = "reference", clip_boxes: bool = False) -> list[dict]:
    """One evaluation-style sample per box, as TopDownCocoDataset would give it for detector
    boxes (``clip_boxes`` and ``crop_geometry`` as its ``clip_detection_boxes`` and
    ``crop_geometry``); a box without area, or with nothing in the image once clipped, is
    dropped."""
    height, width = codec.input_size
    samples = []
    for index, (box, score) in enumerate(boxes):
        box = detection_box(box, image.shape[1], image.shape[0], clip_boxes)
        if box is None:
            continue
        center, scale = box_to_center_scale(box, width / height, padding)
        matrix = crop_matrix(center, scale, 0.0, (width, height), geometry=crop_geometry)
        samples.append({"image": normalize(warp(image, matrix, (width, height))),
                        "inv_matrix": torch.from_numpy(invert_affine(matrix)),
                        "image_id": image_id, "score": score,
                        "area": float(scale[0] * scale[1]), "index": index})
    return samples


def predict_people(heatmap_fn: HeatmapFn, image: np.ndarray,
                   boxes: Sequence[tuple[list[float], float]], codec: HeatmapCodec,
                   image_id: int, batch_size: int = 32, nms_threshold: Optional[float] = 0.9,
                   keypoint_score_threshold: float = 0.2, padding: float = 1.25,
                   crop_geometry: str = "reference", clip_boxes: bool = False) -> list[dict]:
    """COCO keypoint results for the people in ``boxes`` of one image."""
    samples = person_crops(image, boxes, codec, image_id, padding, crop_geometry, clip_boxes)
    if not samples:
        return []
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size)
    predictions = predict(heatmap_fn, loader, codec)
    return make_results(predictions, keypoint_score_threshold, nms_threshold)
