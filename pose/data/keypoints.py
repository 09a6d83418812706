"""Keypoint sets: names, skeleton, flip pairs, body halves and OKS sigmas (0-based indices).

A COCO-format file names its keypoints and skeleton in the keypoint category
(``categories[i].keypoints`` / ``.skeleton``, 1-based); :meth:`KeypointSet.from_category`
reads them from there, so a CrowdPose- or AIC-style file with 14 keypoints works like COCO's
17. What a file does not say is derived from the names:
- flip pairs: ``left_x`` <-> ``right_x`` (also ``l_x``/``r_x`` and ``x_left``/``x_right``);
- the lower body (half-body augmentation): names with hip, knee, ankle, foot, heel or toe;
- OKS sigmas: COCO's for COCO's names (all 17 or any of them), else given
  (``data.oks_sigmas``): a per-keypoint constant of the evaluation metric has no default that
  would be honest.
The skeleton is only drawn: an entry that does not fit the keypoints (a CrowdPose file keeps
a 17-joint skeleton beside its 14 names) is dropped with one warning naming it.
A checkpoint stores its set (:meth:`to_dict`), so the demo draws the skeleton it was trained
with, without the data.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from pose.errors import DataError, DataWarning

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# COCO's skeleton (its file is 1-based; these are 0-based).
SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
            (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4),
            (3, 5), (4, 6))
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                       .87, .87, .89, .89]) / 10.0

_SIDE = re.compile(r"(^|[_\s-])(left|right|l|r)($|[_\s-])", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}
_LOWER_BODY_WORDS = ("hip", "knee", "ankle", "foot", "heel", "toe")


def _side(name: str) -> Optional[str]:
    match = _SIDE.search(name)
    return match.group(2).lower() if match else None


def _mirror_name(name: str) -> Optional[str]:
    match = _SIDE.search(name)
    if not match:
        return None
    word = match.group(2)
    other = _OTHER_SIDE[word.lower()]
    other = other.upper() if word.isupper() else other.capitalize() if word[0].isupper() \
        else other
    return name[:match.start(2)] + other + name[match.end(2):]


@dataclass(frozen=True)
class KeypointSet:
    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    category_id: int = 1

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def coco(cls) -> "KeypointSet":
        return cls(KEYPOINT_NAMES, SKELETON, tuple(float(s) for s in OKS_SIGMAS), 1)

    @classmethod
    def from_category(cls, category: dict, source: str,
                      sigmas: Optional[Sequence[float]] = None) -> "KeypointSet":
        """The set a COCO keypoint category names; ``source`` names the file in errors."""
        where = f"{source}: category {category.get('id')!r}"
        names = category.get("keypoints")
        if not isinstance(names, list) or not names or \
                not all(isinstance(n, str) for n in names):
            raise DataError(f"{where}: 'keypoints' must be a non-empty list of keypoint names")
        if len(set(names)) != len(names):
            raise DataError(f"{where}: 'keypoints' names a keypoint twice")
        skeleton, dropped = [], []
        entries = category.get("skeleton") or []
        for i, limb in enumerate(entries if isinstance(entries, list) else [entries]):
            if not (isinstance(limb, (list, tuple)) and len(limb) == 2
                    and all(isinstance(j, int) and 1 <= j <= len(names) for j in limb)):
                dropped.append(f"skeleton[{i}] = {limb!r}")
                continue
            skeleton.append((limb[0] - 1, limb[1] - 1))
        if dropped:
            more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
            warnings.warn(f"{where}: {', '.join(dropped[:3])}{more} not drawn: a skeleton "
                          f"entry is a pair of keypoint numbers in 1..{len(names)}",
                          DataWarning)
        if sigmas is None:
            unknown = [n for n in names if n not in KEYPOINT_NAMES]
            if unknown:
                raise DataError(f"{where} names {len(names)} keypoints, {len(unknown)} of them "
                                f"not COCO's ({', '.join(unknown[:3])}"
                                f"{', ...' if len(unknown) > 3 else ''}): their OKS sigmas "
                                f"must be given, a list of {len(names)} numbers such as the "
                                f"dataset's own (config key data.oks_sigmas; "
                                f"tools/check_dataset.py --oks-sigmas)")
            sigmas = [OKS_SIGMAS[KEYPOINT_NAMES.index(n)] for n in names]
        if len(sigmas) != len(names):
            raise DataError(f"data.oks_sigmas has {len(sigmas)} values; {where} names "
                            f"{len(names)} keypoints")
        return cls(tuple(names), tuple(skeleton), tuple(float(s) for s in sigmas),
                   int(category["id"]))

    def flip_permutation(self) -> np.ndarray:
        """Index array p such that keypoints[p] swaps every left/right pair."""
        index = {name: i for i, name in enumerate(self.names)}
        return np.array([index.get(_mirror_name(name), i) for i, name in enumerate(self.names)])

    def is_left(self, j: int) -> bool:
        return _side(self.names[j]) in ("left", "l")

    def is_right(self, j: int) -> bool:
        return _side(self.names[j]) in ("right", "r")

    @property
    def lower_body(self) -> tuple[int, ...]:
        return tuple(i for i, n in enumerate(self.names)
                     if any(word in n.lower() for word in _LOWER_BODY_WORDS))

    @property
    def upper_body(self) -> tuple[int, ...]:
        lower = set(self.lower_body)
        return tuple(i for i in range(len(self)) if i not in lower)

    @property
    def oks_sigmas(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    def to_category(self) -> dict[str, Any]:
        """The set as a COCO keypoint category (1-based skeleton)."""
        return {"id": self.category_id, "name": "person", "keypoints": list(self.names),
                "skeleton": [[a + 1, b + 1] for a, b in self.skeleton]}

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "skeleton": [list(p) for p in self.skeleton],
                "sigmas": list(self.sigmas), "category_id": self.category_id}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "KeypointSet":
        return cls(tuple(values["names"]), tuple(tuple(p) for p in values["skeleton"]),
                   tuple(values["sigmas"]), int(values["category_id"]))


COCO_KEYPOINTS = KeypointSet.coco()


def flip_permutation(num_keypoints: int = NUM_KEYPOINTS) -> np.ndarray:
    """COCO's left/right swap (kept for callers that know they hold COCO's 17 keypoints)."""
    if num_keypoints != NUM_KEYPOINTS:
        raise ValueError(f"COCO's flip permutation is for {NUM_KEYPOINTS} keypoints, not "
                         f"{num_keypoints}: use the data's KeypointSet")
    return COCO_KEYPOINTS.flip_permutation()
