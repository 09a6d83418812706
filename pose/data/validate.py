"""The check every COCO-format keypoint file passes before any training or inference.

One pass over the raw JSON, before pycocotools indexes it: every image and annotation entry
is checked for the fields the pipeline and pycocotools' COCOeval read (types, lengths,
required keys, ids that resolve), and every image file is looked up on disk (a listing per
folder, so COCO's 118k training images cost about a second). A fault raises
:class:`~pose.errors.DataError` with one line naming the file, the entry (image or annotation
id) and the field.

What the project repairs or skips instead of refusing is counted in a :class:`DataReport`
and said in one warning line per file, never silently:
- repaired: a missing ``area`` is the box's w x h (PoseTrack-style files omit it; COCOeval
  needs it for its area ranges and OKS scale), a missing ``num_keypoints`` is the count of
  labelled joints (COCOeval reads it), a missing ``iscrowd`` is 0;
- skipped: a person whose box has a negative width or height, or neither width nor height
  (no crop can be made of it). It is removed from the loaded file, so that evaluation's
  ground truth lacks it as training does; the warning names the first few annotation ids.
  A box of zero width or height alone (a line) is kept, as the reference keeps it.
The reference's own filters (crowd regions, people without a labelled joint) are not faults;
the report counts them for ``tools/check_dataset.py``.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pose.data.keypoints import COCO_KEYPOINTS, KeypointSet
from pose.errors import DataError

_NUMBER = (int, float)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and np.isfinite(value)


@dataclass
class DataReport:
    """What one file holds, and what loading it repaired or skipped."""
    path: Path
    keypoint_set: Optional[KeypointSet] = None
    images: int = 0
    annotations: int = 0
    people: int = 0  # usable: keypoint category, not crowd, a labelled joint, a box with area
    labelled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    repaired: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skipped_ids: dict = field(default_factory=dict)  # reason -> annotation ids
    skip_images: list = field(default_factory=list)  # ids of damaged image files skipped
    # labelled keypoints outside their person's box, and the people they belong to
    outside_box: list = field(default_factory=lambda: [0, 0])
    filtered: Counter = field(default_factory=Counter)  # the reference's filters, not faults
    assumed: Optional[str] = None  # what the file left open and the loader assumed

    def warning(self) -> Optional[str]:
        """One line on what was repaired or skipped, or None when nothing was."""
        parts = [f"repaired {n} annotation(s) {what}" for what, n in self.repaired.items()]
        parts += [f"skipped {n} annotation(s) {what}{self._ids(what)}"
                  for what, n in self.skipped.items()]
        parts += [self._images_line()] if self.skip_images else []
        parts += [self.assumed] if self.assumed else []
        return f"{self.path}: " + "; ".join(parts) if parts else None

    def _images_line(self, shown: int = 5) -> str:
        ids = self.skip_images
        more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
        return (f"skipped {len(ids)} damaged image file(s) and their annotations (image ids "
                f"{', '.join(map(str, ids[:shown]))}{more})")

    def _ids(self, reason: str, shown: int = 5) -> str:
        ids = self.skipped_ids.get(reason, [])
        if not ids:
            return ""
        more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
        return f" (annotation ids {', '.join(map(str, ids[:shown]))}{more})"

    def skip_image(self, image_id) -> None:
        self.skip_images.append(image_id)

    def skip(self, reason: str, ann_id) -> None:
        self.skipped[reason] += 1
        self.skipped_ids.setdefault(reason, []).append(ann_id)

    def summary(self) -> str:
        lines = [f"{self.path}: {self.images} images, {self.annotations} annotations, "
                 f"{self.people} people (not crowd, a labelled joint, a box with area)"]
        if self.keypoint_set is not None:
            lines.append(f"  {len(self.keypoint_set)} keypoints (category "
                         f"{self.keypoint_set.category_id}), labelled joints per keypoint:")
            width = max(len(n) for n in self.keypoint_set.names)
            lines += [f"    {name:<{width}}  {int(count)}"
                      for name, count in zip(self.keypoint_set.names, self.labelled)]
        if self.assumed:
            lines.append(f"  assumed: {self.assumed}")
        if self.skip_images:
            lines.append(f"  {self._images_line()}")
        if self.outside_box[0]:
            lines.append(f"  {self.outside_box[0]} labelled keypoint(s) of {self.outside_box[1]} "
                         f"people lie outside their person's box (a crop from the box may cut "
                         f"them off, and evaluation then misses them)")
        for title, counter in (("repaired", self.repaired), ("skipped", self.skipped),
                               ("not used (as the reference)", self.filtered)):
            lines += [f"  {title}: {n} annotation(s) {what}"
                      f"{self._ids(what) if counter is self.skipped else ''}"
                      for what, n in counter.items()]
        return "\n".join(lines)


def _missing_files(path: Path, image_dir: Path, images: list[dict]) -> None:
    listings: dict[Path, set[str]] = {}
    missing = []
    for image in images:
        file = image_dir / image["file_name"]
        if file.parent not in listings:
            try:
                listings[file.parent] = set(os.listdir(file.parent))
            except OSError:
                listings[file.parent] = set()
        if file.name not in listings[file.parent]:
            missing.append((file, image["id"]))
    if missing:
        file, image_id = missing[0]
        raise DataError(f"{path}: {len(missing)} of {len(images)} image files are missing, "
                        f"e.g. {file} (image id {image_id})")


# Where a complete file of each format ends: JPEG's end-of-image marker, PNG's last chunk.
_IMAGE_ENDS = {b"\xff\xd8\xff": b"\xff\xd9", b"\x89PNG\r\n\x1a\n": b"IEND\xaeB`\x82"}
_JPEG_OR_PNG = {".jpg", ".jpeg", ".png"}


def damaged_image(file: Path, tail: int = 4096) -> Optional[str]:
    """Why an image file cannot be trusted, or None. A JPEG or PNG must start with its
    format's signature and hold its end marker in its last ``tail`` bytes: OpenCV decodes a
    truncated file without an error, filling the missing part with grey. Costs two small
    reads per file; other formats are not looked into."""
    if file.suffix.lower() not in _JPEG_OR_PNG:
        return None
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            f.seek(max(f.seek(0, os.SEEK_END) - tail, 0))
            end = f.read()
    except OSError as error:
        return f"unreadable ({error.strerror})"
    for signature, marker in _IMAGE_ENDS.items():
        if head.startswith(signature):
            return None if marker in end else "truncated (its end marker is missing)"
    return "not a JPEG or PNG file (its first bytes are no image signature)"


def _keypoint_category(path: Path, categories: list, sigmas,
                       report: DataReport) -> KeypointSet:
    for i, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise DataError(f"{path}: categories[{i}] needs an integer 'id'")
    with_keypoints = [c for c in categories if "keypoints" in c]
    if len(with_keypoints) > 1:
        ids = [c["id"] for c in with_keypoints]
        raise DataError(f"{path}: {len(ids)} categories name keypoints (ids {ids}); one "
                        f"keypoint category per file is supported")
    if with_keypoints:
        return KeypointSet.from_category(with_keypoints[0], str(path), sigmas)
    people = [c for c in categories if c.get("name") == "person"]
    if len(people) != 1:
        raise DataError(f"{path}: no category names its 'keypoints' (a COCO keypoint file's "
                        f"person category lists them)")
    # A file that names no keypoints: COCO's 17 (each annotation is still checked for 51 values).
    report.assumed = f"category {people[0]['id']} names no keypoints: COCO's 17 assumed"
    return KeypointSet.from_category({**COCO_KEYPOINTS.to_category(), "id": people[0]["id"]},
                                     str(path), sigmas)


def _entry_id(path: Path, kind: str, index: int, entry: Any, seen) -> int:
    """An image or annotation entry's id, checked: an object, an integer id, not seen."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {kind}s[{index}] is not an object")
    entry_id = entry.get("id")
    if not _is_int(entry_id):
        raise DataError(f"{path}: {kind}s[{index}]: 'id' is {entry_id!r}, not an integer")
    if entry_id in seen:
        raise DataError(f"{path}: {kind} id {entry_id} appears twice")
    return entry_id


def check_images(path: Path, images: list, image_dir: Optional[Path]) -> dict[int, dict]:
    """Image entries by id; raises DataError on the first fault."""
    by_id: dict[int, dict] = {}
    for i, image in enumerate(images):
        image_id = _entry_id(path, "image", i, image, by_id)
        where = f"{path}: image id {image_id}"
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise DataError(f"{where}: 'file_name' is {image.get('file_name')!r}, not a name")
        for key in ("width", "height"):
            if key not in image:
                raise DataError(f"{where}: '{key}' missing")
            if not _is_number(image[key]) or image[key] <= 0:
                raise DataError(f"{where}: '{key}' is {image[key]!r}, not a positive number")
        by_id[image_id] = image
    if image_dir is not None:
        _missing_files(path, image_dir, images)
    return by_id


def _check_annotation(where: str, ann: dict, num_keypoints: int,
                      report: DataReport) -> Optional[bool]:
    """Checks (and repairs) one keypoint annotation: True when it is a usable person, False
    when the reference's filters leave it out, None when it is skipped (no crop)."""
    keypoints = ann.get("keypoints")
    if not isinstance(keypoints, list):
        found = "missing" if keypoints is None else type(keypoints).__name__
        raise DataError(f"{where}: 'keypoints' is {found}, not a list of {num_keypoints} x "
                        f"(x, y, v)")
    if len(keypoints) != 3 * num_keypoints:
        raise DataError(f"{where}: 'keypoints' has {len(keypoints)} values; the file's keypoint "
                        f"category names {num_keypoints} keypoints ({3 * num_keypoints} values)")
    for k, value in enumerate(keypoints):
        if not _is_number(value):
            raise DataError(f"{where}: 'keypoints'[{k}] is {value!r}, not a number")
    box = ann.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise DataError(f"{where}: 'bbox' is {box!r}, not [x, y, width, height]")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise DataError(f"{where}: 'iscrowd' is {crowd!r}, not 0 or 1")
    if "iscrowd" not in ann:
        ann["iscrowd"] = 0
        report.repaired["without 'iscrowd' (taken as 0)"] += 1
    if "area" not in ann:
        ann["area"] = float(max(box[2], 0) * max(box[3], 0))
        report.repaired["without 'area' (taken from the box, w x h)"] += 1
    elif not _is_number(ann["area"]):
        raise DataError(f"{where}: 'area' is {ann['area']!r}, not a number")
    labelled = np.asarray(keypoints[2::3], dtype=np.float64) > 0
    if "num_keypoints" not in ann:
        ann["num_keypoints"] = int(labelled.sum())
        report.repaired["without 'num_keypoints' (counted from the keypoints)"] += 1
    if crowd:
        report.filtered["crowd regions"] += 1
        return False
    if not labelled.any():
        report.filtered["without a labelled joint"] += 1
        return False
    if box[2] < 0 or box[3] < 0 or (box[2] == 0 and box[3] == 0):
        report.skip("with a 'bbox' of negative or no size", ann["id"])
        return None
    report.labelled += labelled
    xs = np.asarray(keypoints[0::3], dtype=np.float64)[labelled]
    ys = np.asarray(keypoints[1::3], dtype=np.float64)[labelled]
    outside = int(((xs < box[0]) | (xs > box[0] + box[2]) | (ys < box[1])
                   | (ys > box[1] + box[3])).sum())
    if outside:
        report.outside_box[0] += outside
        report.outside_box[1] += 1
    return True


def _damaged_images(path: Path, image_dir: Path, images: dict[int, dict], skip: bool,
                    report: DataReport) -> set[int]:
    """Ids of the damaged image files (``damaged_image``): one DataError naming the first,
    unless ``skip``, where they are counted in the report instead."""
    damaged = {}
    for image_id, image in images.items():
        reason = damaged_image(image_dir / image["file_name"])
        if reason:
            damaged[image_id] = reason
    if damaged and not skip:
        image_id, reason = next(iter(damaged.items()))
        more = f" ({len(damaged) - 1} more damaged)" if len(damaged) > 1 else ""
        raise DataError(f"{path}: image file {image_dir / images[image_id]['file_name']} "
                        f"(image id {image_id}) is {reason}{more}; set "
                        f"data.skip_damaged_images: true to go on without such images")
    for image_id in damaged:
        report.skip_image(image_id)
    return set(damaged)


def check_keypoint_file(path: Path, data: Any, image_dir: Optional[Path] = None,
                        sigmas: Optional[Sequence[float]] = None,
                        skip_damaged_images: bool = False) -> DataReport:
    """Check (and repair in place) a loaded COCO keypoint file; ``image_dir``: also look up
    every image file and check that it is whole (``damaged_image``). Returns the report;
    raises DataError on the first fault. What is skipped is removed from ``data``."""
    if not isinstance(data, dict):
        raise DataError(f"{path} is not in COCO format (top level is a {type(data).__name__}, "
                        f"not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path} is not in COCO format: missing list '{key}'")
    report = DataReport(path)
    report.keypoint_set = _keypoint_category(path, data["categories"], sigmas, report)
    report.labelled = np.zeros(len(report.keypoint_set), dtype=np.int64)
    images = check_images(path, data["images"], image_dir)
    report.images = len(images)
    damaged = _damaged_images(path, image_dir, images, skip_damaged_images, report) \
        if image_dir is not None else set()
    if damaged:
        data["images"] = [image for image in data["images"] if image["id"] not in damaged]
    seen: set[int] = set()
    kept = []
    for j, ann in enumerate(data["annotations"]):
        ann_id = _entry_id(path, "annotation", j, ann, seen)
        seen.add(ann_id)
        where = f"{path}: annotation id {ann_id}"
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: 'image_id' {ann.get('image_id')!r} names no image of "
                            f"the file")
        if ann["image_id"] in damaged:
            continue
        where += f" (image {ann['image_id']})"
        kept.append(ann)
        if ann.get("category_id") != report.keypoint_set.category_id:
            report.filtered["of another category"] += 1
            continue
        usable = _check_annotation(where, ann, len(report.keypoint_set), report)
        if usable is None:
            kept.pop()
        report.people += bool(usable)
    report.annotations = len(data["annotations"])
    data["annotations"] = kept  # what training cannot use, evaluation does not score
    return report


def check_detections(path: Path, detections: Any, image_ids) -> None:
    """A COCO detection results file: a list of {image_id, bbox, score}; ids must resolve."""
    if not isinstance(detections, list):
        raise DataError(f"detection file {path} must hold a list of detections, not a "
                        f"{type(detections).__name__}")
    unknown = []
    for i, det in enumerate(detections):
        where = f"detection file {path}: entry {i}"
        if not isinstance(det, dict):
            raise DataError(f"{where} is not an object")
        missing = {"image_id", "bbox", "score"} - set(det)
        if missing:
            raise DataError(f"{where} lacks {', '.join(sorted(missing))}")
        box = det["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise DataError(f"{where}: 'bbox' is {box!r}, not [x, y, width, height]")
        if not _is_number(det["score"]):
            raise DataError(f"{where}: 'score' is {det['score']!r}, not a number")
        if image_ids is not None and det["image_id"] not in image_ids:
            unknown.append(det["image_id"])
    if unknown:
        shown = sorted(set(map(str, unknown)))
        raise DataError(f"detection file {path} has image ids absent from the annotations: "
                        f"{', '.join(shown[:10])}{' ...' if len(shown) > 10 else ''}")
