"""COCO person keypoints: names, flip pairs, skeleton, OKS sigmas (0-based indices)."""
import numpy as np

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
UPPER_BODY = tuple(range(0, 11))
LOWER_BODY = tuple(range(11, 17))
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                       .87, .87, .89, .89]) / 10.0


def flip_permutation(num_keypoints: int = NUM_KEYPOINTS) -> np.ndarray:
    """Index array p such that keypoints[p] swaps every left/right pair."""
    perm = np.arange(num_keypoints)
    for left, right in FLIP_PAIRS:
        perm[left], perm[right] = right, left
    return perm


def is_left(index: int) -> bool:
    return index > 0 and index % 2 == 1


def is_right(index: int) -> bool:
    return index > 0 and index % 2 == 0
