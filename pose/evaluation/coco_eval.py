"""COCO keypoint evaluation: rescoring, OKS-NMS, results JSON and pycocotools' COCOeval.

Predictions travel as a dict of arrays over N person instances:
``keypoints`` (N, K, 3) image pixels + score, ``image_ids`` (N,), ``box_scores`` (N,),
``areas`` (N,) box areas in image pixels (for OKS-NMS), ``indices`` (N,) dataset sample
indices (duplicates, e.g. from a DistributedSampler's padding, are dropped by index).
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Optional

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose.data.keypoints import OKS_SIGMAS
from pose.errors import DataError

STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def oks(reference: np.ndarray, others: np.ndarray, reference_area: float, other_areas,
        sigmas: np.ndarray = OKS_SIGMAS, visibility_threshold: Optional[float] = None):
    """OKS of one instance's (K, 3) keypoints with each of (M, K, 3) others -> (M,).

    As in SimpleBaselines' OKS-NMS: the scale is the mean of the two areas and, with a
    threshold, only joints whose scores exceed it in both instances count.
    """
    variances = (2 * sigmas) ** 2
    others = np.asarray(others).reshape(-1, *reference.shape)
    d2 = ((others[..., :2] - reference[None, :, :2]) ** 2).sum(-1)  # (M, K)
    scale = (reference_area + np.asarray(other_areas, dtype=np.float64)) / 2 + np.spacing(1)
    e = d2 / variances[None] / scale[:, None] / 2
    used = np.ones_like(e, dtype=bool)
    if visibility_threshold is not None:
        used = (reference[None, :, 2] > visibility_threshold) & \
            (others[..., 2] > visibility_threshold)
    count = used.sum(1)
    total = (np.exp(-e) * used).sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float,
            sigmas: np.ndarray = OKS_SIGMAS, visibility_threshold: Optional[float] = None):
    """Greedy NMS by OKS: indices of the kept instances, best score first; of equal scores
    the later instance first, as the reference's reversed ascending sort has it."""
    order = np.argsort(np.asarray(scores), kind="stable")[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap = oks(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas,
                      visibility_threshold)
        order = rest[overlap <= threshold]
    return keep


def rescore(keypoints: np.ndarray, box_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Box score x mean of the keypoint scores above ``threshold`` (0 when none is)."""
    kpt_scores = keypoints[..., 2]
    above = kpt_scores > threshold
    mean = np.where(above.any(-1), (kpt_scores * above).sum(-1) / np.maximum(above.sum(-1), 1),
                    0.0)
    return np.asarray(box_scores) * mean


def deduplicate(predictions: dict) -> dict:
    """Keep the first prediction of every dataset sample index."""
    _, first = np.unique(predictions["indices"], return_index=True)
    return {key: np.asarray(value)[first] for key, value in predictions.items()}


def make_results(predictions: dict, keypoint_score_threshold: float = 0.2,
                 nms_threshold: Optional[float] = 0.9, category_id: int = 1,
                 sigmas: np.ndarray = OKS_SIGMAS) -> list[dict]:
    """Predictions -> COCO keypoint results (image_id, category_id, keypoints, score);
    ``sigmas``: the keypoint set's OKS sigmas, for OKS-NMS."""
    predictions = deduplicate(predictions)
    keypoints = predictions["keypoints"]
    scores = rescore(keypoints, predictions["box_scores"], keypoint_score_threshold)
    results = []
    image_ids = predictions["image_ids"]
    for image_id in np.unique(image_ids):
        members = np.flatnonzero(image_ids == image_id)
        kept = members
        if nms_threshold is not None:
            kept = members[oks_nms(keypoints[members], scores[members],
                                   predictions["areas"][members], nms_threshold, sigmas)]
        for i in kept:
            results.append({
                "image_id": int(image_id),
                "category_id": category_id,
                "keypoints": [round(float(v), 3) for v in keypoints[i].reshape(-1)],
                "score": round(float(scores[i]), 6),
            })
    return results


def evaluate_results(coco_gt: COCO, results: list[dict], verbose: bool = False,
                     sigmas: Optional[np.ndarray] = None) -> dict[str, float]:
    """Score COCO keypoint results with pycocotools; returns the 10 named stats.
    ``sigmas``: OKS sigmas of another keypoint set than COCO's (pycocotools' default)."""
    if not results:
        warnings.warn("no keypoint results to evaluate: every COCO stat is 0")
        return {name: 0.0 for name in STAT_NAMES}
    unknown = sorted({r["image_id"] for r in results} - set(coco_gt.getImgIds()))
    if unknown:
        raise DataError(f"results name image ids absent from the ground truth: "
                        f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
        evaluator.params.useSegm = None
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(output.getvalue())
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def format_stats(stats: dict[str, float]) -> str:
    """The 10 stats as a two-line table."""
    header = " | ".join(f"{name:>6}" for name in STAT_NAMES)
    values = " | ".join(f"{stats[name]:6.3f}" for name in STAT_NAMES)
    return f"{header}\n{values}"
