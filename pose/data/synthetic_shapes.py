"""A synthetic image-classification set in the ImageNet folder layout: one shape per image.

    python -m pose.data.synthetic --task classification --out data/synthetic_cls

Writes OUT/{train,val}/<class>/<n>.png, 72x72 pictures of one filled shape (CLASSES) in a
random colour, size, position and angle on a noisy background of another colour, and a
DONE file that says what was written. It stands in for ImageNet on a CPU: the classifier
config learns it to top-1 >= 0.80 within minutes, where chance is 1/8. Output depends only on
the arguments: the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("disc", "square", "triangle", "plus", "ring", "horizontal_bars", "vertical_bars",
           "cross")
SIZE = 72


def _polygon(centre, radius, angle, corners):
    t = angle + np.arange(corners) * 2 * math.pi / corners
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], 1)


def draw_shape(name: str, rng: np.random.Generator) -> np.ndarray:
    """One (SIZE, SIZE, 3) uint8 BGR picture of the shape ``name``."""
    background = rng.integers(0, 256, 3)
    image = np.clip(background + rng.normal(0, 18, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    colour = tuple(int(v) for v in (background + 96 + rng.integers(0, 64, 3)) % 256)
    radius = rng.uniform(0.22, 0.34) * SIZE
    centre = rng.uniform(radius + 2, SIZE - radius - 2, 2)
    angle = rng.uniform(-0.3, 0.3)
    thick = max(int(radius * 0.35), 3)
    c = tuple(int(v) for v in centre)
    if name == "disc":
        cv2.circle(image, c, int(radius), colour, -1, cv2.LINE_AA)
    elif name == "ring":
        cv2.circle(image, c, int(radius - thick / 2), colour, thick, cv2.LINE_AA)
    elif name in ("square", "triangle"):
        corners = 4 if name == "square" else 3
        points = _polygon(centre, radius, angle + (math.pi / 4 if corners == 4 else -math.pi / 2),
                          corners)
        cv2.fillPoly(image, [np.round(points).astype(np.int32)], colour, cv2.LINE_AA)
    elif name in ("plus", "cross"):
        turn = angle + (0 if name == "plus" else math.pi / 4)
        for a in (turn, turn + math.pi / 2):
            d = np.array([math.cos(a), math.sin(a)]) * radius
            cv2.line(image, tuple(int(v) for v in centre - d), tuple(int(v) for v in centre + d),
                     colour, thick, cv2.LINE_AA)
    else:  # bars: three parallel bars across the shape's square
        vertical = name == "vertical_bars"
        for k in (-1, 0, 1):
            offset = k * radius * 0.7
            start = centre + (np.array([offset, -radius]) if vertical
                              else np.array([-radius, offset]))
            end = centre + (np.array([offset, radius]) if vertical
                            else np.array([radius, offset]))
            cv2.line(image, tuple(int(v) for v in start), tuple(int(v) for v in end), colour,
                     max(thick // 2, 2), cv2.LINE_AA)
    return image


def generate(out: str | Path, train: int = 1600, val: int = 400, seed: int = 0) -> Path:
    """Write ``train`` and ``val`` images in all, spread evenly over the classes."""
    out = Path(out)
    for split, count, offset in (("train", train, 0), ("val", val, 1)):
        rng = np.random.default_rng([seed, offset])
        for index in range(count):
            name = CLASSES[index % len(CLASSES)]
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            ok, encoded = cv2.imencode(".png", draw_shape(name, rng))
            (folder / f"{index:06d}.png").write_bytes(encoded.tobytes())
    (out / "DONE").write_text(json.dumps(_identity(train, val, seed)) + "\n")
    return out


def _identity(train: int, val: int, seed: int) -> dict:
    return {"task": "classification", "train": train, "val": val, "seed": seed,
            "classes": list(CLASSES)}


def ensure(out: str | Path, train: int = 1600, val: int = 400, seed: int = 0) -> Path:
    """Generate the set unless ``out`` already holds this exact one."""
    done = Path(out) / "DONE"
    if done.is_file() and json.loads(done.read_text()) == _identity(train, val, seed):
        return Path(out)
    return generate(out, train, val, seed)
