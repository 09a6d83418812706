import numpy as np
import pytest
from pycocotools.coco import COCO

from pose.data.synthetic import generate


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate(tmp_path / "a", train=4, val=3, seed=11)
    b = generate(tmp_path / "b", train=4, val=3, seed=11)
    for name in ("annotations/person_keypoints_train.json",
                 "annotations/person_keypoints_val.json",
                 "person_detection_results/val_detections.json", "train/train_000002.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = generate(tmp_path / "c", train=4, val=3, seed=12)
    assert (c / "annotations/person_keypoints_train.json").read_bytes() != \
        (a / "annotations/person_keypoints_train.json").read_bytes()


def test_labelled_keypoints_lie_inside_image_and_box(synthetic_data):
    coco = COCO(str(synthetic_data / "annotations/person_keypoints_train.json"))
    visibilities = set()
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        k = np.array(ann["keypoints"]).reshape(17, 3)
        labelled = k[:, 2] > 0
        visibilities |= set(k[:, 2].tolist())
        x, y, w, h = ann["bbox"]
        assert (k[labelled, 0] >= 0).all() and (k[labelled, 0] < image["width"]).all()
        assert (k[labelled, 1] >= 0).all() and (k[labelled, 1] < image["height"]).all()
        assert (k[labelled, 0] >= x).all() and (k[labelled, 0] <= x + w).all()
        assert (k[labelled, 1] >= y).all() and (k[labelled, 1] <= y + h).all()
        assert (k[~labelled] == 0).all()
        assert ann["num_keypoints"] == labelled.sum() and ann["area"] > 0
    assert visibilities == {0, 1, 2}  # occluded and out-of-frame joints occur


def test_detections_refer_to_val_images_and_include_false_positives(synthetic_data):
    import json

    coco = COCO(str(synthetic_data / "annotations/person_keypoints_val.json"))
    detections = json.loads((synthetic_data / "person_detection_results/val_detections.json")
                            .read_text())
    assert {d["image_id"] for d in detections} <= set(coco.getImgIds())
    assert min(d["score"] for d in detections) < 0.5 < max(d["score"] for d in detections)
    coco.loadRes(detections)  # pycocotools accepts it as detection results


def test_the_single_scene_has_one_unoccluded_figure_per_image(tmp_path):
    root = generate(tmp_path / "single", train=6, val=2, seed=4, scene="single")
    coco = COCO(str(root / "annotations/person_keypoints_train.json"))
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) == 1
        assert 1 not in anns[0]["keypoints"][2::3]  # nothing in front of the figure
    with pytest.raises(ValueError, match="unknown scene 'busy'"):
        generate(tmp_path / "busy", train=1, val=1, scene="busy")


def test_the_single_scene_marks_each_joint_white_on_the_left_and_black_on_the_right(tmp_path):
    import cv2

    root = generate(tmp_path / "single", train=8, val=1, seed=3, scene="single")
    coco = COCO(str(root / "annotations/person_keypoints_train.json"))
    left, right = [], []
    for ann in coco.dataset["annotations"]:
        image = cv2.imread(str(root / "train" / coco.imgs[ann["image_id"]]["file_name"]))
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
        for j, (x, y, v) in enumerate(np.array(ann["keypoints"]).reshape(17, 3)):
            if j >= 3 and v == 2:  # the mean of the 3x3 pixels around the joint
                (left if j % 2 == 1 else right).append(grey[y - 1:y + 2, x - 1:x + 2].mean())
    # A marker can be drawn over by a later one where two joints meet: most, not all.
    assert np.mean(np.array(left) > 200) > 0.9 and np.mean(np.array(right) < 55) > 0.9


def test_a_dataset_written_for_another_scene_definition_is_written_again(tmp_path):
    import json

    from pose.data.synthetic import ensure

    root = ensure(tmp_path / "data", train=2, val=1, seed=0)
    done = json.loads((root / "DONE").read_text())
    assert done["scene_definition"]["markers"] is True
    stale = {**done, "scene_definition": {**done["scene_definition"], "markers": False}}
    (root / "DONE").write_text(json.dumps(stale))  # as written before the markers existed
    image = root / "train" / "train_000000.jpg"
    image.write_bytes(b"stale")
    ensure(root, train=2, val=1, seed=0)
    assert image.read_bytes() != b"stale" and json.loads((root / "DONE").read_text()) == done
    image.write_bytes(b"kept")
    ensure(root, train=2, val=1, seed=0)  # the same definition: nothing is written
    assert image.read_bytes() == b"kept"
