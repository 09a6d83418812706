import json

import numpy as np
import pytest
import torch

from pose.data.coco import TopDownCocoDataset, load_coco
from pose.data.heatmap import HeatmapCodec
from pose.data.keypoints import COCO_KEYPOINTS, flip_permutation
from pose.data.transforms import apply_affine
from pose.inference import predict, target_heatmaps
from pose.errors import DataError
from pose.evaluation.coco_eval import evaluate_results, make_results


def sample_dataset(coco_sample, encoding="reference", **kwargs):
    codec = HeatmapCodec((256, 192), stride=4, sigma=2.0, encoding=encoding)
    return TopDownCocoDataset(coco_sample / "person_keypoints_sample.json",
                              coco_sample / "images", codec, **kwargs)


def test_gt_boxes_skip_people_without_labelled_keypoints(coco_sample):
    dataset = sample_dataset(coco_sample)
    assert len(dataset) == 12  # 14 people, 2 with no labelled keypoint
    item = dataset[0]
    assert item["image"].shape == (3, 256, 192) and item["heatmaps"].shape == (17, 64, 48)
    assert item["image_id"] == 785  # from the annotation file


def test_detector_boxes_are_loaded_for_evaluation(coco_sample):
    dataset = sample_dataset(coco_sample, det_file=str(coco_sample /
                                                       "person_detections_sample.json"))
    assert len(dataset) == 118
    strict = sample_dataset(coco_sample, det_file=str(coco_sample /
                                                      "person_detections_sample.json"),
                            det_score_threshold=0.5)
    assert 0 < len(strict) < 118


@pytest.mark.parametrize("encoding", ["reference", "unbiased"])
def test_oracle_with_gt_boxes_scores_ap_1(coco_sample, encoding):
    dataset = sample_dataset(coco_sample, encoding)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    predictions = predict(target_heatmaps, loader, dataset.codec)
    stats = evaluate_results(dataset.coco, make_results(predictions))
    assert stats["AP"] == pytest.approx(1.0, abs=1e-9)


def test_augmented_targets_decode_back_to_the_annotated_keypoints(coco_sample):
    # Unbiased targets: the bound below is the geometry's, without the reference's rounding
    # (which tests/test_reference_fidelity.py checks exactly).
    dataset = sample_dataset(coco_sample, encoding="unbiased", train=True)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            coords, peaks = dataset.codec.decode(item["heatmaps"][None].numpy())
            image_coords = apply_affine(coords[0], item["inv_matrix"].numpy())
            truth = dataset.samples[index]["keypoints"]
            if item["flipped"]:
                truth = truth[flip_permutation()]
            # Joints whose target peak lies inside the heatmap (peak ~1; outside joints that
            # still get weight have their truncated Gaussian cut by the border).
            used = (item["weights"].numpy() > 0) & (peaks[0] > 0.9)
            # 1 heatmap pixel = 4 crop pixels; the crop may be up to 1.35x the padded box.
            tolerance = 0.5 * 4 * item["area"] ** 0.5 / 192 * 1.5
            error = np.linalg.norm(image_coords[used] - truth[used, :2], axis=1)
            assert error.max() < tolerance


def test_augmentation_is_reproducible_for_a_seed_and_epoch(coco_sample):
    a, b = sample_dataset(coco_sample, train=True), sample_dataset(coco_sample, train=True)
    a.set_epoch(4)
    b.set_epoch(4)
    assert torch.equal(a[3]["image"], b[3]["image"])
    b.set_epoch(5)
    assert not torch.equal(a[3]["image"], b[3]["image"])


def test_corrupt_image_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    ann = {"images": [{"id": 7, "file_name": "broken.jpg", "width": 100, "height": 100}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
                            "bbox": [10, 10, 50, 60], "area": 3000,
                            "keypoints": [30, 30, 2] * 17, "num_keypoints": 17}],
           "categories": [COCO_KEYPOINTS.to_category()]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    # found when the file is loaded, before any sample is read
    with pytest.raises(DataError, match=r"broken.jpg \(image id 7\) is not a JPEG or PNG"):
        TopDownCocoDataset(tmp_path / "ann.json", tmp_path / "images", HeatmapCodec((64, 48)))


def test_missing_annotation_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="annotation file not found: .*nope.json"):
        load_coco(tmp_path / "nope.json")


@pytest.mark.parametrize("content,message", [
    ("[1, 2, 3]", "not in COCO format"),
    ('{"images": []}', "missing list 'annotations'"),
    ("{not json", "not valid JSON"),
])
def test_non_coco_annotation_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_coco(path)
