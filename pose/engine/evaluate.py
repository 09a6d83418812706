"""Evaluation over a (possibly sharded) loader: predictions gathered on rank 0, scored there."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pose.data.coco import TopDownCocoDataset
from pose.engine.distributed import DistInfo, gather_to_main
from pose.estimator import PoseEstimator
from pose.evaluation.coco_eval import evaluate_results
from pose.utils import atomic_write_json


def evaluate(estimator: PoseEstimator, loader, dataset: TopDownCocoDataset,
             info: DistInfo = DistInfo(), results_file: Optional[Path] = None,
             progress: bool = False) -> Optional[dict[str, float]]:
    """COCO stats on rank 0 (None on other ranks).

    Each rank predicts its shard; rank 0 concatenates them, drops the duplicates a
    DistributedSampler adds to even out shards, rescores, applies OKS-NMS and scores.
    """
    local = estimator.predictions(loader, progress=progress and info.is_main)
    shards = gather_to_main(local, info)
    if not info.is_main:
        return None
    predictions = {key: np.concatenate([s[key] for s in shards]) for key in local}
    results = estimator.results(predictions)
    if results_file is not None:
        atomic_write_json(Path(results_file), results, indent=None)
    keypoint_set = dataset.keypoint_set
    return evaluate_results(dataset.coco, results, sigmas=keypoint_set.oks_sigmas)
