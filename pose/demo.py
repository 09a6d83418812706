"""The demo's inputs and outputs: images, folders and videos; person boxes from a detection
file, fixed boxes, the whole image or torchvision's detector. The pose itself comes from
``pose.estimator.PoseEstimator``, the evaluation's own path."""
from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import cv2
import numpy as np

from pose.data.coco import read_detection_file, read_json
from pose.data.validate import check_images
from pose.errors import DataError, PoseError
from pose.estimator import Boxes, PoseEstimator
from pose.utils import atomic_write_json
from pose.vis import draw_skeletons

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def list_inputs(path: str | Path, recursive: bool = False) -> list[Path]:
    """An image or video file, or the images and videos of a folder (and its subfolders
    with ``recursive``), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        return sorted(p for p in found if p.is_file()
                      and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    raise DataError(f"input not found: {path}")


def output_paths(path: Path, input_root: Path, out: Path) -> tuple[Path, Path]:
    """(annotated picture or video, JSON) for an input: its own name, under its folder's
    path relative to the input folder, so that a.jpg and a.png (or two folders' a.jpg)
    never write to one file."""
    relative = path.relative_to(input_root) if input_root.is_dir() else Path(path.name)
    target = out / relative
    if is_video(path) and path.suffix.lower() != ".mp4":
        target = target.with_name(target.name + ".mp4")  # written as MPEG-4 whatever came in
    return target, out / relative.with_name(relative.name + ".json")


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

    With ``ann_file``, an image file is matched to the annotation's image entry whose
    ``file_name`` (a path relative to the images folder) is the end of the file's path, so
    that ``a/000000.jpg`` and ``b/000000.jpg`` (PoseTrack's per-video frames) stay apart; a file
    that several entries could name is refused. Without it, the image id is the file name's
    number (COCO's convention: 000000000785.jpg is image 785), and two files that read as the
    same id are refused.
    """

    def __init__(self, det_file: str | Path, score_threshold: float,
                 ann_file: Optional[str | Path] = None) -> None:
        self.by_name: Optional[dict[str, list[tuple[tuple[str, ...], int]]]] = None
        self.numbered: dict[int, Path] = {}
        ids = None
        if ann_file is not None:
            data = read_json(ann_file, "annotation file")
            if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                raise DataError(f"annotation file {ann_file} is not in COCO format: it needs "
                                f"a list 'images'")
            images = check_images(Path(ann_file), data["images"], None)
            self.by_name = {}
            for image_id, image in images.items():
                parts = PurePosixPath(image["file_name"].replace("\\", "/")).parts
                self.by_name.setdefault(parts[-1], []).append((parts, image_id))
            ids = set(images)
        self.by_image: dict[int, list] = {}
        for det in read_detection_file(det_file, score_threshold, ids):
            self.by_image.setdefault(det["image_id"], []).append((det["bbox"], det["score"]))
        self.ann_file = ann_file

    def image_id(self, path: Path) -> int:
        if self.by_name is not None:
            parts = path.absolute().parts
            found = [(names, i) for names, i in self.by_name.get(path.name, [])
                     if parts[-len(names):] == names]
            if not found:
                raise DataError(f"{path} is not in {self.ann_file}: no image's file_name is "
                                f"the end of its path")
            if len(found) > 1:
                names = ", ".join("/".join(n) for n, _ in found[:3])
                raise PoseError(f"{path} matches {len(found)} images of {self.ann_file} "
                                f"({names}): their file_name entries must tell them apart")
            return found[0][1]
        if not path.stem.isdigit():
            raise DataError(f"cannot tell {path.name}'s image id: give --ann-file")
        image_id = int(path.stem)
        other = self.numbered.setdefault(image_id, path)
        if other != path:
            raise PoseError(f"{other} and {path} both read as image id {image_id}: give "
                            f"--ann-file, whose file_name entries tell them apart")
        return image_id

    def boxes(self, path: Path) -> list[tuple[list[float], float]]:
        return self.by_image.get(self.image_id(path), [])


class TorchvisionPersonDetector:
    """torchvision's Faster R-CNN (ResNet-50 FPN) with weights from a local file."""

    def __init__(self, weights: Optional[str], device, score_threshold: float = 0.5) -> None:
        import torch

        if not weights or not Path(weights).is_file():
            raise PoseError(f"--detector torchvision needs --detector-weights PATH to an "
                            f"existing fasterrcnn_resnet50_fpn state dict (got {weights!r}); "
                            f"nothing is downloaded at run time")
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        self.model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.to(device).eval()
        self.device, self.score_threshold = device, score_threshold

    def __call__(self, image: np.ndarray) -> list[tuple[list[float], float]]:
        import torch

        with torch.no_grad():
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(self.device)
            output = self.model([tensor])[0]
        keep = (output["labels"] == 1) & (output["scores"] >= self.score_threshold)
        boxes = output["boxes"][keep].cpu().numpy()
        scores = output["scores"][keep].cpu().numpy()
        return [([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], float(s))
                for (x1, y1, x2, y2), s in zip(boxes, scores)]


def whole_image(image: np.ndarray) -> list[tuple[list[float], float]]:
    return [([0.0, 0.0, float(image.shape[1]), float(image.shape[0])], 1.0)]


def draw(image: np.ndarray, people: list[dict], estimator: PoseEstimator, boxes: Boxes,
         keypoint_threshold: float, draw_boxes: bool) -> np.ndarray:
    count = len(estimator.keypoint_set)
    keypoints = np.array([p["keypoints"] for p in people], dtype=float).reshape(-1, count, 3)
    box_array = np.array([b for b, _ in boxes]) if draw_boxes and len(boxes) else None
    return draw_skeletons(image, keypoints, keypoint_threshold, box_array,
                          keypoint_set=estimator.keypoint_set)


def annotate_video(path: Path, video_out: Path, json_out: Path, estimator: PoseEstimator,
                   boxes_of: Callable[[np.ndarray], Boxes], keypoint_threshold: float,
                   draw_boxes: bool) -> tuple[int, float]:
    """An annotated MPEG-4 video and one JSON of per-frame results; (frames, seconds)."""
    from tqdm import tqdm

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"video file {path} could not be opened (not a video OpenCV reads)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    video_out.parent.mkdir(parents=True, exist_ok=True)
    partial = video_out.with_name(f".{video_out.stem}.partial.mp4")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (width, height))
    frames, start = [], time.perf_counter()
    try:
        if not writer.isOpened():
            raise DataError(f"could not write an MPEG-4 video to {partial.parent}")
        for index in tqdm(range(total or 10 ** 9), total=total, desc=path.name, leave=False):
            ok, bgr = capture.read()
            if not ok:
                break
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            boxes = boxes_of(image)
            people = estimator(image, boxes, image_id=index)
            picture = draw(image, people, estimator, boxes, keypoint_threshold, draw_boxes)
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            frames.append({"frame": index, "people": people})
    finally:
        capture.release()
        writer.release()
    seconds = time.perf_counter() - start
    if not frames:
        partial.unlink(missing_ok=True)
        raise DataError(f"video file {path} has no readable frame")
    os.replace(partial, video_out)
    atomic_write_json(json_out, {"video": str(path), "fps": fps, "frames": frames})
    return len(frames), seconds


def write_picture(picture: np.ndarray, target: Path) -> None:
    """The picture in the input's own format (its suffix), written atomically."""
    from pose.utils import atomic_write

    ok, encoded = cv2.imencode(target.suffix or ".jpg",
                               cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"could not encode the picture for {target} as {target.suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: f.write(encoded.tobytes()), mode="wb")
