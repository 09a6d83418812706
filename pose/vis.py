"""Drawing skeletons on images (torchvision's drawing helpers, COCO limbs, left/right colours)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torchvision.utils import draw_bounding_boxes, draw_keypoints

from pose.data.keypoints import SKELETON, is_left, is_right

LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (0, 200, 255), (255, 80, 40), (60, 255, 60)


def _limb_groups():
    left = [(a, b) for a, b in SKELETON if is_left(a) and is_left(b)]
    right = [(a, b) for a, b in SKELETON if is_right(a) and is_right(b)]
    centre = [limb for limb in SKELETON if limb not in left and limb not in right]
    return ((left, LEFT_COLOUR), (right, RIGHT_COLOUR), (centre, CENTRE_COLOUR))


def draw_skeletons(image: np.ndarray, keypoints: np.ndarray, score_threshold: float = 0.3,
                   boxes: Optional[np.ndarray] = None, width: int = 2,
                   radius: int = 3) -> np.ndarray:
    """Draw people on an RGB uint8 (H, W, 3) image.

    ``keypoints``: (N, K, 3) image pixels + score (or COCO visibility); joints whose score is
    at or below ``score_threshold`` are hidden with the limbs touching them. ``boxes``:
    optional (N, 4) x, y, w, h. Returns a new (H, W, 3) uint8 image.
    """
    canvas = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if boxes is not None and len(boxes):
        xyxy = torch.as_tensor(np.asarray(boxes, dtype=np.float64), dtype=torch.float)
        xyxy[:, 2:] += xyxy[:, :2]
        canvas = draw_bounding_boxes(canvas, xyxy, colors="white", width=1)
    if len(keypoints):
        points = torch.as_tensor(np.asarray(keypoints)[..., :2], dtype=torch.float)
        visible = torch.as_tensor(np.asarray(keypoints)[..., 2] > score_threshold)
        for limbs, colour in _limb_groups():
            canvas = draw_keypoints(canvas, points, connectivity=limbs, colors=colour,
                                    radius=radius, width=width, visibility=visible)
    return canvas.permute(1, 2, 0).numpy().copy()
