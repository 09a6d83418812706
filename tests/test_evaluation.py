import copy
import contextlib
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from pose.data.coco import load_coco
from pose.data.keypoints import OKS_SIGMAS
from pose.errors import DataError
from pose.evaluation.coco_eval import (STAT_NAMES, evaluate_results, make_results, oks,
                                       oks_nms, rescore)


def sample_gt(coco_sample):
    coco = load_coco(coco_sample / "person_keypoints_sample.json")
    anns = [a for a in coco.dataset["annotations"] if a["num_keypoints"] > 0]
    return coco, anns


def test_ground_truth_as_results_scores_ap_1(coco_sample):
    coco, anns = sample_gt(coco_sample)
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"],
                "score": 1.0} for a in anns]
    stats = evaluate_results(coco, results)
    assert stats == {name: 1.0 for name in STAT_NAMES}


def test_perturbed_predictions_score_as_pycocotools_does_directly(coco_sample):
    coco, anns = sample_gt(coco_sample)
    rng = np.random.default_rng(0)
    keypoints, offsets = [], [0, 2, 4, 8, 12, 16, 24, 32]
    for i, ann in enumerate(anns):
        k = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        angle = rng.uniform(0, 2 * np.pi, 17)
        shift = offsets[i % len(offsets)]
        k[:, 0] += shift * np.cos(angle)
        k[:, 1] += shift * np.sin(angle)
        k[:, 2] = 0.9
        keypoints.append(k)
    keypoints = np.stack(keypoints)
    predictions = {"keypoints": keypoints,
                   "image_ids": np.array([a["image_id"] for a in anns]),
                   "box_scores": np.linspace(1.0, 0.5, len(anns)),
                   "areas": np.array([a["bbox"][2] * a["bbox"][3] for a in anns]),
                   "indices": np.arange(len(anns))}
    ours = evaluate_results(coco, make_results(predictions))

    direct = [{"image_id": a["image_id"], "category_id": 1,
               "keypoints": keypoints[i].reshape(-1).tolist(),
               "score": float(predictions["box_scores"][i] * 0.9)} for i, a in enumerate(anns)]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(direct)), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = dict(zip(STAT_NAMES, evaluator.stats))
    assert 0.2 < ours["AP"] < 0.99
    assert ours == pytest.approx(expected, abs=1e-9)


def test_ddp_duplicates_are_removed_before_scoring(coco_sample):
    coco, anns = sample_gt(coco_sample)
    base = {"keypoints": np.stack([np.array(a["keypoints"], float).reshape(17, 3) for a in anns]),
            "image_ids": np.array([a["image_id"] for a in anns]),
            "box_scores": np.ones(len(anns)), "areas": np.full(len(anns), 1e4),
            "indices": np.arange(len(anns))}
    base["keypoints"][..., 2] = 1.0
    doubled = {k: np.concatenate([v, v[:3]]) for k, v in base.items()}
    assert make_results(doubled) == make_results(base)
    assert len(make_results(doubled)) == len(anns)


def test_oks_nms_keeps_the_best_of_near_duplicates_and_distinct_people():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], 1)
    a_copy = a.copy()
    a_copy[:, :2] += 0.5  # the same person, slightly moved
    far = a.copy()
    far[:, :2] += 300
    keypoints = np.stack([a_copy, a, far])
    keep = oks_nms(keypoints, np.array([0.8, 0.9, 0.3]), np.full(3, 5000.0), 0.9)
    assert keep == [1, 2]
    assert oks_nms(keypoints, np.array([0.9, 0.8, 0.7]), np.full(3, 5000.0), 1.0) == [0, 1, 2]


def test_oks_of_identical_instances_is_one_and_drops_with_distance():
    k = np.concatenate([np.zeros((17, 2)), np.ones((17, 1))], 1)
    moved = k.copy()
    moved[:, 0] += 10
    values = oks(k, np.stack([k, moved]), 1000.0, [1000.0, 1000.0])
    assert values[0] == pytest.approx(1.0)
    expected = np.exp(-100 / (2 * OKS_SIGMAS) ** 2 / 1000.0 / 2).mean()
    assert values[1] == pytest.approx(expected)


def test_rescoring_averages_keypoint_scores_above_threshold():
    keypoints = np.zeros((2, 17, 3))
    keypoints[0, :4, 2] = [0.9, 0.5, 0.1, 0.3]
    scores = rescore(keypoints, np.array([0.5, 0.7]), 0.2)
    assert scores[0] == pytest.approx(0.5 * (0.9 + 0.5 + 0.3) / 3)
    assert scores[1] == 0.0


def test_empty_results_give_zero_stats_and_a_warning(coco_sample):
    coco, _ = sample_gt(coco_sample)
    with pytest.warns(UserWarning, match="no keypoint results"):
        stats = evaluate_results(coco, [])
    assert stats == {name: 0.0 for name in STAT_NAMES}


def test_results_with_foreign_image_ids_are_an_error_naming_them(coco_sample):
    coco, anns = sample_gt(coco_sample)
    results = [{"image_id": 123456789, "category_id": 1, "keypoints": anns[0]["keypoints"],
                "score": 1.0}]
    with pytest.raises(DataError, match="123456789"):
        evaluate_results(coco, results)
