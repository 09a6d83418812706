"""Bad and unfamiliar input: one line and exit 2, never a traceback or a lost epoch.

The bad-input cases start from the valid synthetic dataset and corrupt one thing each; every
tool (train, test, demo) runs in-process through the same ``pose.cli.run`` as on the command
line, with DataLoader workers (``num_workers`` 0 and 2), and the test reads what reached the
file descriptors (so a worker's own traceback would be seen too).
"""
import copy
import json
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from pose.config import load_config
from pose.data.coco import TopDownCocoDataset, load_keypoint_file
from pose.data.heatmap import HeatmapCodec
from pose.engine import runner
from pose.checkpoint import load_checkpoint
from pose.errors import DataError, DataWarning
from pose.models import build_model

from conftest import ROOT, run_tool_in_process as run_tool
from test_engine import SYNTHETIC_CONFIG, assert_same_run, tiny_overrides

CROWDPOSE_SIGMAS = [.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089,
                    .079, .079]


def set_args(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def data_copy(synthetic_data, tmp_path):
    """A writable copy of the synthetic dataset's annotation files (images shared)."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_data / "annotations", root / "annotations")
    shutil.copytree(synthetic_data / "person_detection_results", root / "person_detection_results")
    for split in ("train", "val"):
        (root / split).symlink_to(synthetic_data / split)
    return root


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def val_file(root):
    return root / "annotations/person_keypoints_val.json"


def train_file(root):
    return root / "annotations/person_keypoints_train.json"


def first_annotation(data):
    return data["annotations"][0]


# (name, file to corrupt, corruption, words the one line must hold)
FILE_CASES = [
    ("keypoint value a string", val_file,
     lambda d: first_annotation(d)["keypoints"].__setitem__(4, "12"),
     ["annotation id", "'keypoints'[4]", "'12'"]),
    ("image entry without width", val_file, lambda d: d["images"][1].pop("width"),
     ["image id", "'width' missing"]),
    ("bbox of three numbers", val_file,
     lambda d: first_annotation(d).__setitem__("bbox", [1, 2, 3]),
     ["annotation id", "'bbox'", "[1, 2, 3]"]),
    ("one annotation of another length", val_file,
     lambda d: first_annotation(d).__setitem__("keypoints", first_annotation(d)["keypoints"][:42]),
     ["annotation id", "42 values", "17 keypoints"]),
    ("unknown image id", val_file, lambda d: first_annotation(d).__setitem__("image_id", 7),
     ["annotation id", "'image_id' 7"]),
    ("duplicate image id", train_file, lambda d: d["images"].append(dict(d["images"][0])),
     ["image id", "appears twice"]),
    ("not a keypoint category", val_file,
     lambda d: d["categories"].__setitem__(0, {"id": 1, "name": "car"}),
     ["no category names its 'keypoints'"]),
    ("a 14-keypoint category of other names without sigmas", val_file,
     lambda d: d["categories"][0].update(keypoints=d["categories"][0]["keypoints"][:12]
                                         + ["head", "neck"], skeleton=[]),
     ["2 of them not COCO's (head, neck)", "data.oks_sigmas"]),
    ("JSON that is a list", val_file, "[]", ["not in COCO format"]),
    ("not JSON", train_file, "{images: []", ["is not valid JSON"]),
]


def corrupt(root, file_of, change):
    """Apply a case: an edit of the loaded JSON, or (a string) the file's new text."""
    path = file_of(root)
    if isinstance(change, str):
        path.write_text(change)
    else:
        edit(path, change)
    return path


def visible_lines(text):
    """The lines a terminal shows: what follows each line's last carriage return (a
    progress bar cleared with one is not seen)."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")
            if line.rsplit("\r", 1)[-1].strip()]


def assert_one_line(status, err, words, work_dir=None):
    lines = visible_lines(err)
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    if work_dir is not None and work_dir.exists():
        left = {p.name for p in work_dir.iterdir()}
        assert left <= {"config.yaml", "log.jsonl", "tb"}, left


@pytest.mark.slow(seconds=20)
@pytest.mark.parametrize("workers", [0, 2])
def test_every_bad_file_is_one_line_and_exit_2_in_train_and_test(data_copy, tmp_path, capfd,
                                                                 workers):
    pristine = {f: f.read_text() for f in (val_file(data_copy), train_file(data_copy))}
    overrides = tiny_overrides(data_copy, **{"data.num_workers": workers})
    checkpoint = tmp_path / "random.pth"
    torch.save({"model": build_model(load_config(SYNTHETIC_CONFIG, overrides).model)
                .state_dict()}, checkpoint)
    for name, file_of, change, words in FILE_CASES:
        path = corrupt(data_copy, file_of, change)
        words = [str(path)] + words
        work = tmp_path / f"train_{name.replace(' ', '_')}"
        status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG,
                                  *set_args(overrides), "--work-dir", work)
        assert_one_line(status, err, words, work)
        if file_of is val_file:
            for args in (["--checkpoint", checkpoint], ["--oracle"]):
                work = tmp_path / f"test_{name.replace(' ', '_')}"
                status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG,
                                          *set_args(overrides), *args, "--work-dir", work)
                assert_one_line(status, err, words, work)
        for f, text in pristine.items():
            f.write_text(text)


@pytest.mark.parametrize("workers", [0, 2])
def test_missing_and_corrupt_images_are_one_line(data_copy, tmp_path, capfd, workers):
    overrides = tiny_overrides(data_copy, **{"data.num_workers": workers,
                                             "train.epochs": 1})
    images = data_copy / "train_images"
    shutil.copytree(data_copy / "train", images)
    overrides += ["data.train_images=train_images"]
    victim = sorted(images.iterdir())[3]
    victim.unlink()
    work = tmp_path / "missing"
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", work)
    assert_one_line(status, err, ["1 of", "image files are missing", victim.name], work)
    assert not work.exists()  # found before any work starts
    # a file that is there but is no image: found by the load-time check, before any work
    victim.write_bytes(b"not a picture")
    work = tmp_path / "corrupt"
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", work)
    assert_one_line(status, err, [f"image file {victim} (image id", "not a JPEG or PNG"], work)
    assert not work.exists()


def test_bad_detection_file_and_config_mismatch(data_copy, tmp_path, capfd):
    overrides = tiny_overrides(data_copy)
    det = data_copy / "person_detection_results/val_detections.json"
    edit(det, lambda d: d[2].__setitem__("bbox", [1, 2, "w", 4]))
    status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--oracle", "--det-file", det, "--work-dir", tmp_path / "t")
    # --oracle scores GT boxes: the detection file is not read
    assert status == 0, err
    status, _, err = run_tool(capfd, "check_dataset", "--config", SYNTHETIC_CONFIG,
                              *set_args(overrides + ["eval.use_gt_boxes=false"]))
    assert_one_line(status, err, [str(det), "entry 2", "'bbox'"])
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG,
                              *set_args(overrides + ["model.num_keypoints=14"]),
                              "--work-dir", tmp_path / "w")
    assert_one_line(status, err, ["model.num_keypoints", "14", "17 keypoints"], tmp_path / "w")


def test_a_file_without_area_is_repaired_in_one_warning_and_scores_ap_1(data_copy, tmp_path,
                                                                      capfd):
    def strip(data):
        for ann in data["annotations"]:
            del ann["area"], ann["num_keypoints"]

    edit(val_file(data_copy), strip)
    with pytest.warns(DataWarning) as warned:
        status, out, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG,
                                    *set_args(tiny_overrides(data_copy)), "--oracle",
                                    "--work-dir", tmp_path / "oracle")
    assert status == 0, err
    (warning,) = [str(w.message) for w in warned]
    assert warning.startswith(str(val_file(data_copy))) and "\n" not in warning
    assert "without 'area' (taken from the box" in warning
    assert "without 'num_keypoints'" in warning
    metrics = json.loads((tmp_path / "oracle/metrics.json").read_text())
    assert metrics["final"]["AP"] == 1.0
    # the repaired area is the box's, as the warning says
    with pytest.warns(DataWarning):
        coco, report = load_keypoint_file(val_file(data_copy))
    for ann in coco.dataset["annotations"]:
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
    assert report.repaired["without 'area' (taken from the box, w x h)"] == \
        len(coco.dataset["annotations"])


def to_fourteen_keypoints(data):
    """COCO's 17 -> CrowdPose's 14 (12 limbs' joints, head = nose, neck = mid-shoulders)."""
    names = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
             "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
             "right_ankle", "head", "neck"]
    for ann in data["annotations"]:
        k = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        neck = (k[5] + k[6]) / 2 if k[5, 2] > 0 and k[6, 2] > 0 else np.zeros(3)
        neck[2] = 2 if neck[2] > 0 else 0
        new = np.concatenate([k[5:17], k[:1], neck[None]])
        ann["keypoints"] = [float(v) for v in new.reshape(-1)]
        ann["num_keypoints"] = int((new[:, 2] > 0).sum())
    data["categories"] = [{"id": 1, "name": "person", "keypoints": names,
                           "skeleton": [[13, 14], [14, 1], [14, 2], [1, 3], [3, 5], [2, 4],
                                        [4, 6], [1, 7], [2, 8], [7, 8], [7, 9], [9, 11],
                                        [8, 10], [10, 12]]}]


@pytest.mark.slow(seconds=30)
def test_a_14_keypoint_file_trains_evaluates_and_draws_with_its_own_skeleton(
        data_copy, tmp_path, capfd):
    for path in (train_file(data_copy), val_file(data_copy)):
        edit(path, to_fourteen_keypoints)
    overrides = tiny_overrides(data_copy, **{"train.epochs": 1}) + \
        [f"data.oks_sigmas={CROWDPOSE_SIGMAS}"]
    status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--oracle", "--work-dir", tmp_path / "oracle")
    assert status == 0, err
    assert json.loads((tmp_path / "oracle/metrics.json").read_text())["final"]["AP"] == 1.0

    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", tmp_path / "run")
    assert status == 0, err
    state = load_checkpoint(tmp_path / "run/best.pth")
    assert len(state["keypoint_set"]["names"]) == 14
    assert state["model"]["head.final.weight"].shape[0] == 14
    assert load_config(tmp_path / "run/config.yaml").model.num_keypoints == 14
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results and all(len(r["keypoints"]) == 42 for r in results)

    # the demo needs no data: the checkpoint carries the keypoint set and its skeleton
    image = data_copy / "val" / sorted(p.name for p in (data_copy / "val").iterdir())[0]
    status, out, err = run_tool(capfd, "demo", "--config", tmp_path / "run/config.yaml",
                                "--checkpoint", tmp_path / "run/best.pth", "--input", image,
                                "--out", tmp_path / "demo", "--kpt-threshold", "-1")
    assert status == 0, err
    people = json.loads((tmp_path / "demo" / f"{image.name}.json").read_text())
    assert len(people) == 1 and len(people[0]["keypoints"]) == 42
    # drawn limbs: the neck-head limb (13, 14) is green (centre), shoulder-elbow blue/orange
    picture = cv2.cvtColor(cv2.imread(str(tmp_path / "demo" / image.name)), cv2.COLOR_BGR2RGB)
    original = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    assert np.abs(picture.astype(int) - original).max() > 100


def test_evaluation_failure_keeps_the_epoch_and_resume_evaluates_it_first(
        synthetic_data, tmp_path, monkeypatch):
    cfg = load_config(SYNTHETIC_CONFIG, tiny_overrides(synthetic_data, **{
        "train.epochs": 2, "eval.interval": 1}))
    runner.run_training(cfg, tmp_path / "straight")

    from pose.engine import tasks

    real_evaluate = tasks.evaluate

    def failing(*args, **kwargs):
        raise DataError("results name image ids absent from the ground truth: [7]")

    monkeypatch.setattr(tasks, "evaluate", failing)
    with pytest.raises(DataError):
        runner.run_training(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run/latest.pth")
    assert state["epoch"] == 1 and state["eval_pending"]  # the epoch's training is kept
    monkeypatch.setattr(tasks, "evaluate", real_evaluate)
    runner.run_training(cfg, tmp_path / "run", resume=True)
    evals = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_a_checkpoint_of_another_architecture_is_explained(synthetic_data, tmp_path, capfd):
    overrides = tiny_overrides(synthetic_data, **{"train.epochs": 1})
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", tmp_path / "run")
    assert status == 0, err
    other = overrides + ["model.backbone.act=relu", "model.head.act=relu"]
    status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG, *set_args(other),
                              "--checkpoint", tmp_path / "run/best.pth")
    assert_one_line(status, err, ["does not fit the config's model", "unexpected",
                                  "backbone act 'dyrelu_b'", "head act 'dyrelu_c'",
                                  f"--config {tmp_path / 'run/config.yaml'}"])
    status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG, *set_args(other),
                              "--checkpoint", tmp_path / "run")
    assert_one_line(status, err, [f"checkpoint {tmp_path / 'run'} is a folder"])


def test_demo_inputs(synthetic_data, tmp_path, capfd):
    from pose.models import build_model

    overrides = tiny_overrides(synthetic_data)
    checkpoint = tmp_path / "random.pth"
    torch.manual_seed(0)
    torch.save({"model": build_model(load_config(SYNTHETIC_CONFIG, overrides).model)
                .state_dict()}, checkpoint)
    base = ["--config", SYNTHETIC_CONFIG, *set_args(overrides), "--checkpoint", checkpoint]
    image = sorted((synthetic_data / "val").iterdir())[0]
    det = synthetic_data / "person_detection_results/val_detections.json"
    for text, words in (("not json", ["is not valid JSON"]), ("[1, 2]", ["not in COCO format"])):
        ann = tmp_path / "ann.json"
        ann.write_text(text)
        status, _, err = run_tool(capfd, "demo", *base, "--input", image, "--out",
                                  tmp_path / "o", "--det-file", det, "--ann-file", ann)
        assert_one_line(status, err, [str(ann)] + words)
    status, _, err = run_tool(capfd, "demo", *base[:-1], tmp_path, "--input", image,
                              "--out", tmp_path / "o")
    assert_one_line(status, err, [f"checkpoint {tmp_path} is a folder"])
    # a.jpg and a.png in one folder (and a subfolder's a.jpg with --recursive): three results
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    picture = cv2.imread(str(image))
    cv2.imwrite(str(folder / "a.jpg"), picture)
    cv2.imwrite(str(folder / "a.png"), picture)
    cv2.imwrite(str(folder / "sub/a.jpg"), np.zeros((40, 30, 3), np.uint8))
    status, out, err = run_tool(capfd, "demo", *base, "--input", folder, "--out", tmp_path / "o",
                                "--recursive", "--boxes", "5,5,1,1;0,0,0,0")
    assert status == 2 and "--boxes" in err  # a box without area is refused up front
    status, out, err = run_tool(capfd, "demo", *base, "--input", folder, "--out", tmp_path / "o",
                                "--recursive", "--boxes", "500,500,10,10")
    assert status == 0, err
    for name in ("a.jpg", "a.png", "sub/a.jpg"):
        assert (tmp_path / "o" / name).is_file() and (tmp_path / "o" / f"{name}.json").is_file()
    assert "wrote 3 picture(s)" in out
    # a box outside every image keeps no person (data.clip_detection_boxes would drop it; as
    # given it is still a crop): the demo says when an image yields no person
    status, out, err = run_tool(capfd, "demo", *base, "--set", "data.clip_detection_boxes=true",
                                "--input", folder / "a.png", "--out", tmp_path / "o2",
                                "--boxes", "5000,5000,10,10")
    assert status == 0 and "a.png: no person" in out, out + err
    status, _, err = run_tool(capfd, "demo", *base, "--input", folder, "--out", folder)
    assert_one_line(status, err, ["is the input folder"])


def test_demo_and_evaluation_give_identical_keypoints(synthetic_data, tmp_path, capfd):
    from pose.models import build_model

    # One crop per batch on both sides: a batch's composition may change the float arithmetic
    # of a convolution, which is not what this test is about (the pipeline is).
    overrides = tiny_overrides(synthetic_data) + ["eval.use_gt_boxes=false",
                                                  "data.det_score_threshold=0.3",
                                                  "eval.batch_size=1"]
    checkpoint = tmp_path / "random.pth"
    torch.manual_seed(1)
    torch.save({"model": build_model(load_config(SYNTHETIC_CONFIG, overrides).model)
                .state_dict()}, checkpoint)
    base = ["--config", SYNTHETIC_CONFIG, *set_args(overrides), "--checkpoint", checkpoint]
    status, _, err = run_tool(capfd, "test", *base, "--work-dir", tmp_path / "test")
    assert status == 0, err
    evaluated = json.loads((tmp_path / "test/results.json").read_text())
    det = synthetic_data / "person_detection_results/val_detections.json"
    status, _, err = run_tool(capfd, "demo", *base, "--input", synthetic_data / "val",
                              "--out", tmp_path / "demo", "--det-file", det, "--ann-file",
                              synthetic_data / "annotations/person_keypoints_val.json",
                              "--box-threshold", "0.3")
    assert status == 0, err
    demo = []
    for path in sorted((tmp_path / "demo").glob("*.json")):
        demo += json.loads(path.read_text())
    key = lambda r: (r["image_id"], -r["score"], r["keypoints"])  # noqa: E731
    assert len(evaluated) > 5
    assert sorted(demo, key=key) == sorted(evaluated, key=key)


def test_demo_video_gives_an_annotated_video_and_per_frame_json(synthetic_data, tmp_path,
                                                                 capfd):
    from pose.models import build_model

    overrides = tiny_overrides(synthetic_data)
    checkpoint = tmp_path / "random.pth"
    torch.save({"model": build_model(load_config(SYNTHETIC_CONFIG, overrides).model)
                .state_dict()}, checkpoint)
    frames = [cv2.resize(cv2.imread(str(p)), (160, 240))
              for p in sorted((synthetic_data / "val").iterdir())[:5]]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 240))
    for frame in frames:
        writer.write(frame)
    writer.release()
    status, out, err = run_tool(capfd, "demo", "--config", SYNTHETIC_CONFIG,
                                *set_args(overrides), "--checkpoint", checkpoint,
                                "--input", video, "--out", tmp_path / "out")
    assert status == 0, err
    assert "5 frames at" in out and "frames/s" in out
    written = cv2.VideoCapture(str(tmp_path / "out/clip.avi.mp4"))
    count = 0
    while written.read()[0]:
        count += 1
    assert count == 5 and int(written.get(cv2.CAP_PROP_FRAME_WIDTH)) == 160
    results = json.loads((tmp_path / "out/clip.avi.json").read_text())
    assert [f["frame"] for f in results["frames"]] == list(range(5))
    assert all(len(f["people"]) == 1 and len(f["people"][0]["keypoints"]) == 51
               for f in results["frames"])
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_a_worker_error_reaches_the_user_as_its_own_message(synthetic_data):
    dataset = TopDownCocoDataset(synthetic_data / "annotations/person_keypoints_val.json",
                                 synthetic_data / "val", HeatmapCodec((96, 64)))
    dataset.image_dir = synthetic_data / "nowhere"
    loader = torch.utils.data.DataLoader(dataset, num_workers=1)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    path = dataset._image_path(dataset.samples[0]["image_id"])
    assert str(caught.value) == f"image file {path} is missing"
    # and an error raised directly keeps its text
    assert str(DataError("plain")) == "plain"
    assert copy.copy(DataError("x")).args == ("x",)



# Real datasets as they come (PoseTrack, CrowdPose, AI Challenger-style files) and the last
# tracebacks: each case one line or one warning, never a traceback.

def random_checkpoint(tmp_path, overrides):
    path = tmp_path / "random.pth"
    torch.save({"model": build_model(load_config(SYNTHETIC_CONFIG, overrides).model)
                .state_dict()}, path)
    return path


def test_a_posetrack_layout_gives_every_frame_its_own_image_id(synthetic_data, tmp_path, capfd):
    source = sorted((synthetic_data / "val").iterdir())[:2]
    images = tmp_path / "images"
    files = {"001/000000.jpg": 10, "002/000000.jpg": 20}
    for (name, image_id), picture in zip(files.items(), source):
        (images / name).parent.mkdir(parents=True)
        shutil.copy(picture, images / name)
    height, width = cv2.imread(str(source[0])).shape[:2]
    ann = {"images": [{"id": i, "file_name": f"images/{n}", "width": width, "height": height}
                      for n, i in files.items()], "annotations": [],
           "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    dets = [{"image_id": 10, "category_id": 1, "bbox": [5, 5, 30, 60], "score": 0.9},
            {"image_id": 20, "category_id": 1, "bbox": [10, 8, 40, 70], "score": 0.8},
            {"image_id": 20, "category_id": 1, "bbox": [50, 8, 40, 70], "score": 0.7}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    overrides = tiny_overrides(synthetic_data)
    base = ["--config", SYNTHETIC_CONFIG, *set_args(overrides), "--checkpoint",
            random_checkpoint(tmp_path, overrides), "--input", images, "--recursive",
            "--det-file", tmp_path / "dets.json", "--kpt-threshold", "-1"]
    status, _, err = run_tool(capfd, "demo", *base, "--ann-file", tmp_path / "ann.json",
                              "--out", tmp_path / "out")
    assert status == 0, err
    for name, image_id in files.items():
        people = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert {p["image_id"] for p in people} == {image_id}
        assert len(people) == sum(d["image_id"] == image_id for d in dets)
    # by number alone both frames are image 0: refused, not given one frame's boxes
    status, _, err = run_tool(capfd, "demo", *base, "--out", tmp_path / "out2")
    assert_one_line(status, err, ["both read as image id 0", "--ann-file"])
    # file names that cannot tell two frames apart: refused
    ann["images"][1]["file_name"] = ann["images"][0]["file_name"] = "000000.jpg"
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    status, _, err = run_tool(capfd, "demo", *base, "--ann-file", tmp_path / "ann.json",
                              "--out", tmp_path / "out3")
    assert_one_line(status, err, ["matches 2 images of", "must tell them apart"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_skeleton_naming_keypoint_16_of_14_loads_with_one_warning(data_copy, tmp_path, capfd,
                                                                    workers):
    def crowdpose_with_coco_skeleton(data):
        to_fourteen_keypoints(data)
        data["categories"][0]["skeleton"] += [[16, 14], [17, 15]]

    edit(val_file(data_copy), crowdpose_with_coco_skeleton)
    overrides = tiny_overrides(data_copy, **{"data.num_workers": workers}) + \
        [f"data.oks_sigmas={CROWDPOSE_SIGMAS}"]
    with pytest.warns(DataWarning) as warned:
        status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG,
                                  *set_args(overrides), "--oracle", "--work-dir", tmp_path / "o")
    assert status == 0, err
    (warning,) = [str(w.message) for w in warned]
    assert "skeleton[14] = [16, 14], skeleton[15] = [17, 15] not drawn" in warning
    assert json.loads((tmp_path / "o/metrics.json").read_text())["final"]["AP"] == 1.0


def test_a_truncated_jpeg_is_named_before_training_or_skipped_when_asked(data_copy, tmp_path,
                                                                          capfd):
    images = data_copy / "train_images"
    shutil.copytree(data_copy / "train", images)
    victim = sorted(images.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert cv2.imread(str(victim)) is not None  # OpenCV decodes it, half grey
    capfd.readouterr()  # (and libjpeg says so, without naming the file)
    overrides = tiny_overrides(data_copy, **{"train.epochs": 1}) + \
        ["data.train_images=train_images"]
    work = tmp_path / "refused"
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", work)
    assert_one_line(status, err, [str(victim), "truncated", "data.skip_damaged_images"], work)
    assert not work.exists()
    with pytest.warns(DataWarning, match="skipped 1 damaged image file"):
        status, out, err = run_tool(capfd, "check_dataset", "--config", SYNTHETIC_CONFIG,
                                    *set_args(overrides + ["data.skip_damaged_images=true"]),
                                    "--split", "train")
    assert status == 0, err
    assert "skipped 1 damaged image file(s) and their annotations (image ids" in out
    with pytest.warns(DataWarning, match="skipped 1 damaged image file"):
        status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG,
                                  *set_args(overrides + ["data.skip_damaged_images=true"]),
                                  "--work-dir", tmp_path / "skipped")
    assert status == 0, err


def test_a_negative_width_box_is_skipped_on_both_sides_and_the_oracle_scores_1(
        coco_sample, tmp_path, capfd):
    # the real COCO sample at the paper's size, where the oracle is exact
    shutil.copy(coco_sample / "person_keypoints_sample.json", tmp_path / "ann.json")
    (tmp_path / "images").symlink_to(coco_sample / "images")
    edit(tmp_path / "ann.json", lambda d: d["annotations"][2]["bbox"].__setitem__(2, -40.0))
    ann_id = json.loads((tmp_path / "ann.json").read_text())["annotations"][2]["id"]
    overrides = [f"data.root={tmp_path}", "data.val_ann=ann.json", "data.val_images=images",
                 "data.num_workers=0"]
    with pytest.warns(DataWarning) as warned:
        status, _, err = run_tool(capfd, "test", "--config",
                                  ROOT / "configs/coco/mobilenetv2_x0.5_256x192.yaml",
                                  *set_args(overrides), "--oracle", "--work-dir", tmp_path / "o")
    assert status == 0, err
    (warning,) = [str(w.message) for w in warned]
    assert f"skipped 1 annotation(s) with a 'bbox' of negative or no size (annotation ids " \
           f"{ann_id})" in warning
    assert json.loads((tmp_path / "o/metrics.json").read_text())["final"]["AP"] == 1.0


def test_check_dataset_counts_keypoints_outside_their_box(data_copy, capfd):
    def move_out(data):
        for ann in data["annotations"][:2]:
            x, y, w, h = ann["bbox"]
            ann["keypoints"][0:2] = [x + w + 5, y]  # nose right of the box
            ann["keypoints"][2] = 2
            ann["keypoints"][3:5] = [x, y - 3]  # left eye above it
            ann["keypoints"][5] = 2

    edit(val_file(data_copy), move_out)
    status, out, err = run_tool(capfd, "check_dataset", "--ann-file", val_file(data_copy))
    assert status == 0, err
    assert "4 labelled keypoint(s) of 2 people lie outside their person's box" in out


def test_the_last_tracebacks_are_one_line(data_copy, tmp_path, capfd):
    overrides = tiny_overrides(data_copy)
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe\x00model: x")
    status, _, err = run_tool(capfd, "train", "--config", binary, "--work-dir", tmp_path / "w")
    assert_one_line(status, err, [str(binary), "not UTF-8 text"])

    picture = sorted((data_copy / "val").iterdir())[0]
    occupied = tmp_path / "taken.txt"
    occupied.write_text("mine")
    status, _, err = run_tool(capfd, "demo", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--checkpoint", random_checkpoint(tmp_path, overrides), "--input",
                              picture, "--out", occupied)
    assert_one_line(status, err, ["--out", "is a file"])
    assert occupied.read_text() == "mine"

    edit(train_file(data_copy), lambda d: d.__setitem__("annotations", []))
    status, out, err = run_tool(capfd, "check_dataset", "--config", SYNTHETIC_CONFIG,
                                *set_args(overrides), "--split", "train")
    assert_one_line(status, err, ["no usable person to train on", "0 annotations"])
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", tmp_path / "empty")
    assert_one_line(status, err, ["training file", "has no usable person"])


def test_greyscale_arrays_work_in_the_python_api_and_other_arrays_are_refused(
        synthetic_data, tmp_path):
    from pose.errors import PoseError
    from pose.estimator import PoseEstimator

    overrides = tiny_overrides(synthetic_data)
    cfg = load_config(SYNTHETIC_CONFIG, overrides)
    estimator = PoseEstimator.from_checkpoint(cfg, random_checkpoint(tmp_path, overrides))
    rgb = cv2.cvtColor(cv2.imread(str(sorted((synthetic_data / "val").iterdir())[0])),
                       cv2.COLOR_BGR2GRAY)
    boxes = [([5, 5, 40, 80], 0.9)]
    grey = estimator(rgb, boxes)
    assert grey == estimator(np.repeat(rgb[:, :, None], 3, axis=2), boxes)
    assert grey == estimator(rgb[:, :, None], boxes)
    for bad, words in [(rgb.astype(np.float32), "float32"), (np.zeros((4, 4, 4), np.uint8),
                                                            "(4, 4, 4)"), ([[1]], "list")]:
        with pytest.raises(PoseError, match=re.escape(words)):
            estimator(bad, boxes)


def test_messages_name_the_checkpoint_and_det_file_may_be_null(data_copy, tmp_path, capfd):
    for path in (train_file(data_copy), val_file(data_copy)):
        edit(path, to_fourteen_keypoints)
    overrides = tiny_overrides(data_copy, **{"train.epochs": 1}) + \
        [f"data.oks_sigmas={CROWDPOSE_SIGMAS}"]
    status, _, err = run_tool(capfd, "train", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                              "--work-dir", tmp_path / "run")
    assert status == 0, err
    picture = sorted((data_copy / "val").iterdir())[0]
    status, _, err = run_tool(capfd, "demo", "--config", SYNTHETIC_CONFIG,
                              *set_args(overrides + ["model.num_keypoints=17"]), "--checkpoint",
                              tmp_path / "run/best.pth", "--input", picture, "--out",
                              tmp_path / "demo")
    assert_one_line(status, err, ["model.num_keypoints': 17", "but checkpoint",
                                  "has 14 keypoints"])
    assert "the data" not in err
    nulled = overrides + ["data.det_file=null"]
    status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG, *set_args(nulled),
                              "--checkpoint", tmp_path / "run/best.pth", "--work-dir",
                              tmp_path / "t")
    assert status == 0, err  # the synthetic config evaluates on GT boxes
    status, _, err = run_tool(capfd, "test", "--config", SYNTHETIC_CONFIG,
                              *set_args(nulled + ["eval.use_gt_boxes=false"]), "--checkpoint",
                              tmp_path / "run/best.pth", "--work-dir", tmp_path / "t2")
    assert_one_line(status, err, ["data.det_file is null", "eval.use_gt_boxes"])
