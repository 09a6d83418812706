"""Drawing skeletons on images: the keypoint set's limbs (COCO's by default), left side blue,
right side orange, centre green.

OpenCV draws (torchvision's draw_keypoints cannot colour limbs: its lines are always white).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from pose.data.keypoints import COCO_KEYPOINTS, KeypointSet

LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (40, 140, 255), (255, 120, 30), (60, 220, 60)


def _side_colour(keypoint_set: KeypointSet, a: int,
                 b: Optional[int] = None) -> tuple[int, int, int]:
    joints = (a,) if b is None else (a, b)
    if all(keypoint_set.is_left(j) for j in joints):
        return LEFT_COLOUR
    if all(keypoint_set.is_right(j) for j in joints):
        return RIGHT_COLOUR
    return CENTRE_COLOUR


def draw_skeletons(image: np.ndarray, keypoints: np.ndarray, score_threshold: float = 0.3,
                   boxes: Optional[np.ndarray] = None, width: int = 2,
                   radius: int = 3, keypoint_set: KeypointSet = COCO_KEYPOINTS) -> np.ndarray:
    """Draw people on an RGB uint8 (H, W, 3) image; returns a new image.

    ``keypoints``: (N, K, 3) image pixels + score (or COCO visibility); joints whose score is
    at or below ``score_threshold`` are hidden with the limbs touching them. ``boxes``:
    optional (N, 4) x, y, w, h, drawn in white.
    """
    canvas = np.ascontiguousarray(image).copy()
    for x, y, w, h in ([] if boxes is None else np.asarray(boxes, dtype=float)):
        cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)), (255, 255, 255), 1)
    for person in np.asarray(keypoints, dtype=float).reshape(-1, len(keypoint_set), 3):
        shown = person[:, 2] > score_threshold
        points = [(int(round(x)), int(round(y))) for x, y in person[:, :2]]
        for a, b in keypoint_set.skeleton:
            if shown[a] and shown[b]:
                cv2.line(canvas, points[a], points[b], _side_colour(keypoint_set, a, b), width,
                         cv2.LINE_AA)
        for j in np.flatnonzero(shown):
            cv2.circle(canvas, points[j], radius, _side_colour(keypoint_set, j), -1,
                       cv2.LINE_AA)
    return canvas
