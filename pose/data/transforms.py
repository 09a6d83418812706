"""Top-down geometry: person box -> centre/scale -> affine crop, and its inverse.

Coordinates are image pixels with integer values at pixel centres (OpenCV's convention).
``scale`` is the (width, height) in image pixels of the region that fills the crop.

Where in the crop the box centre lands, ``geometry=``:
- ``reference`` (SimpleBaselines/HRNet, mmpose without UDP): at (W / 2, H / 2); a training
  flip mirrors the image, which mirrors the crop about x = W / 2 (x -> W - x).
- ``centred``: on the crop's middle, ((W - 1) / 2, (H - 1) / 2); a flip mirrors the crop's
  pixels (x -> W - 1 - x).
Both decode back exactly (the inverse matrix); they differ by half a crop pixel, which matters
once targets are rounded to whole heatmap pixels as the reference rounds them.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from pose.config import REFERENCE_UPPER_BODY_PROB


def box_to_center_scale(box, aspect_ratio: float, padding: float = 1.25):
    """(x, y, w, h) box -> centre (2,) and scale (2,) with w/h = aspect_ratio, padded."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64) * padding


CROP_GEOMETRIES = ("reference", "centred")


def crop_matrix(center, scale, rotation: float, output_size, flip: bool = False,
                geometry: str = "reference") -> np.ndarray:
    """2x3 affine matrix from image pixels to crop pixels.

    The region of size ``scale`` around ``center``, rotated by ``rotation`` degrees
    (counter-clockwise in the image), fills an ``output_size`` (width, height) crop; with
    ``flip`` the crop is mirrored, as ``geometry`` says (module docstring).
    """
    if geometry not in CROP_GEOMETRIES:
        raise ValueError(f"crop geometry must be one of {', '.join(CROP_GEOMETRIES)}, "
                         f"got {geometry!r}")
    middle = 0.0 if geometry == "reference" else 1.0
    out_w, out_h = output_size
    theta = math.radians(rotation)
    sx, sy = out_w / scale[0], out_h / scale[1]
    cos, sin = math.cos(theta), math.sin(theta)
    # crop = S * R * (image - center) + crop_center.
    linear = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]])
    offset = np.array([out_w - middle, out_h - middle]) * 0.5 - linear @ np.asarray(center)
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    if flip:
        matrix = np.array([[-1.0, 0.0, out_w - middle], [0.0, 1.0, 0.0]]) @ np.vstack(
            [matrix, [0.0, 0.0, 1.0]])
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix.astype(np.float64))


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map points (..., P, 2) through a 2x3 matrix, or a batch (..., 2, 3) of them."""
    matrix = np.asarray(matrix)
    return np.einsum("...ij,...pj->...pi", matrix[..., :2], points) + matrix[..., None, :, 2]


def warp(image: np.ndarray, matrix: np.ndarray, output_size) -> np.ndarray:
    return cv2.warpAffine(image, matrix, (int(output_size[0]), int(output_size[1])),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


HALF_BODY_CENTRES = ("mean", "box")


def half_body_center_scale(keypoints: np.ndarray, visible: np.ndarray, aspect_ratio: float,
                           rng: np.random.Generator, upper_body, lower_body,
                           padding: float = 1.5, upper_prob: float = REFERENCE_UPPER_BODY_PROB,
                           centre: str = "mean"):
    """Centre/scale of the upper or lower body's visible joints (index lists ``upper_body``,
    ``lower_body``), or None if too few.

    As the reference (SimpleBaselines/HRNet): the upper body with probability ``upper_prob``
    when it has more than two visible joints, else the lower body if that has more than two,
    else the upper; at least two joints are needed. The box spans the chosen joints and is
    centred on their ``mean`` (the reference) or on the middle of their extent (``box``).
    One uniform draw from ``rng`` is made.
    """
    if centre not in HALF_BODY_CENTRES:
        raise ValueError(f"half-body centre must be one of {', '.join(HALF_BODY_CENTRES)}, "
                         f"got {centre!r}")
    upper = [i for i in upper_body if visible[i] > 0]
    lower = [i for i in lower_body if visible[i] > 0]
    chosen = upper if (rng.random() < upper_prob and len(upper) > 2) or len(lower) <= 2 \
        else lower
    if len(chosen) < 2:
        return None
    points = keypoints[chosen, :2]
    low, high = points.min(axis=0), points.max(axis=0)
    # A floor of one pixel keeps joints that coincide from making a zero-sized crop (the
    # reference would divide by zero there).
    width, height = max(high[0] - low[0], 1.0), max(high[1] - low[1], 1.0)
    middle = points.mean(axis=0) if centre == "mean" else low + np.array([width, height]) / 2
    _, scale = box_to_center_scale((0.0, 0.0, width, height), aspect_ratio, padding)
    return middle.astype(np.float64), scale


def rotation_angle(draw: float, factor: float, clip: float = 2.0) -> float:
    """A training rotation in degrees from a standard normal ``draw``: N(0, factor) clipped to
    +-clip * factor. The reference clips at twice the factor (clip=2); clip=1 gives
    clip(draw, -1, 1) * factor, which puts about a third of the rotated samples on +-factor."""
    return float(np.clip(draw * factor, -clip * factor, clip * factor))
