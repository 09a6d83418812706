"""Demo, dynamics plot and ONNX export."""
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from pose.config import load_config
from pose.models import build_model

from conftest import run_tool_in_process
from test_engine import SYNTHETIC_CONFIG

SMALL = ["data.input_size=[96, 64]", "model.head.channels=[32, 16, 16]"]


def save_random_checkpoint(path, overrides):
    torch.manual_seed(0)
    model = build_model(load_config(SYNTHETIC_CONFIG, overrides).model)
    torch.save({"model": model.state_dict()}, path)
    return path


def run_tool(capfd, name, *args):
    """``tools/<name> ARGS`` through its command line's entry point, in this process."""
    code, out, err = run_tool_in_process(capfd, name.removesuffix(".py"), *args)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def set_args(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_demo_on_coco_sample_writes_a_picture_and_coco_json_per_image(coco_sample, tmp_path, capfd):
    checkpoint = save_random_checkpoint(tmp_path / "model.pth", SMALL)
    result = run_tool(capfd, "demo.py", "--config", SYNTHETIC_CONFIG, *set_args(SMALL),
                      "--checkpoint", checkpoint, "--input", coco_sample / "images",
                      "--out", tmp_path / "out", "--det-file",
                      coco_sample / "person_detections_sample.json", "--kpt-threshold", "-1")
    assert result.returncode == 0, result.stderr[-2000:]
    images = sorted((coco_sample / "images").glob("*.jpg"))
    assert len(images) == 4
    for image_path in images:
        results = json.loads((tmp_path / "out" / f"{image_path.name}.json").read_text())
        assert results, image_path
        for r in results:
            assert set(r) == {"image_id", "category_id", "keypoints", "score"}
            assert r["image_id"] == int(image_path.stem) and r["category_id"] == 1
            assert len(r["keypoints"]) == 51 and isinstance(r["score"], float)
        original = cv2.imread(str(image_path)).astype(int)
        picture = cv2.imread(str(tmp_path / "out" / image_path.name)).astype(int)
        assert picture.shape == original.shape
        difference = np.abs(picture - original).max(axis=2)
        assert np.median(difference) <= 4  # the image itself is kept (JPEG aside) ...
        h, w = difference.shape
        drawn = 0
        for r in results:  # ... and changed where joints are drawn
            for x, y, _ in np.array(r["keypoints"]).reshape(17, 3):
                xi, yi = int(round(x)), int(round(y))
                if 2 <= xi < w - 2 and 2 <= yi < h - 2:
                    drawn += difference[yi - 2:yi + 3, xi - 2:xi + 3].max() > 60
        assert drawn > 0.9 * sum(1 for r in results for x, y, _ in
                                 np.array(r["keypoints"]).reshape(17, 3)
                                 if 2 <= round(x) < w - 2 and 2 <= round(y) < h - 2)


def test_demo_skips_unreadable_files_and_goes_on(coco_sample, tmp_path, capfd):
    checkpoint = save_random_checkpoint(tmp_path / "model.pth", SMALL)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jpg").symlink_to(coco_sample / "images" / "000000000785.jpg")
    (folder / "broken.jpg").write_bytes(b"garbage")
    result = run_tool(capfd, "demo.py", "--config", SYNTHETIC_CONFIG, *set_args(SMALL),
                      "--checkpoint", checkpoint, "--input", folder, "--out", tmp_path / "out",
                      "--boxes", "100,50,200,300")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stdout and "broken.jpg" in result.stdout
    assert (tmp_path / "out/good.jpg").is_file() and (tmp_path / "out/good.jpg.json").is_file()
    assert not (tmp_path / "out/broken.jpg.json").exists()


def test_demo_detector_without_weights_is_a_clear_error(coco_sample, tmp_path, capfd):
    checkpoint = save_random_checkpoint(tmp_path / "model.pth", SMALL)
    result = run_tool(capfd, "demo.py", "--config", SYNTHETIC_CONFIG, *set_args(SMALL),
                      "--checkpoint", checkpoint, "--input", coco_sample / "images",
                      "--out", tmp_path / "out", "--detector", "torchvision")
    assert result.returncode == 2
    assert "needs --detector-weights" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow(seconds=40)
def test_dynamics_plot_for_dyrelu_and_refusal_for_relu(synthetic_data, tmp_path, capfd):
    overrides = SMALL + [f"data.root={synthetic_data}", "model.backbone.act=dyrelu_b"]
    checkpoint = save_random_checkpoint(tmp_path / "model.pth", overrides)
    result = run_tool(capfd, "plot_dynamics.py", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                      "--checkpoint", checkpoint, "--images", 4, "--out", tmp_path / "dyn.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "dyn.png").read_bytes()[:4] == b"\x89PNG"

    relu = SMALL + [f"data.root={synthetic_data}", "model.backbone.act=relu"]
    relu_checkpoint = save_random_checkpoint(tmp_path / "relu.pth", relu)
    refused = run_tool(capfd, "plot_dynamics.py", "--config", SYNTHETIC_CONFIG, *set_args(relu),
                       "--checkpoint", relu_checkpoint)
    assert refused.returncode == 2 and "not DY-ReLU" in refused.stderr


def with_random_statistics(model):
    """Non-trivial BatchNorm statistics, and outputs of order one (the heatmap conv starts at
    std 0.001), so that an absolute bound means something."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.normal_(0, 0.3)
    return model


ONNX_ACTS = ["relu", "dyrelu_a", "dyrelu_b", "dyrelu_c", {"name": "dyrelu_c", "k": 3,
             "spatial": "residual"}, "se_relu", "maxout",
             {"name": "maxout", "k": 3, "depthwise": "maxout", "projection": False}]


@pytest.mark.parametrize("act", ONNX_ACTS, ids=str)
def test_onnx_export_matches_pytorch_for_every_activation(act, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pose.export import export
    from pose.models.mobilenetv2 import conv_norm_act

    # The activation at a dense and a depthwise position (the whole-model export is below).
    model = torch.nn.Sequential(conv_norm_act(3, 8, 3, act, stride=2),
                                conv_norm_act(8, 8, 3, act, groups=8), torch.nn.Conv2d(8, 17, 1))
    assert export(with_random_statistics(model), (32, 24), tmp_path / "m.onnx") < 1e-4


@pytest.mark.slow(seconds=45)
def test_export_tool_writes_a_checked_onnx_pose_model(tmp_path, capfd):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    overrides = SMALL + ["model.backbone.act=maxout", "model.head.act=dyrelu_c"]
    model = with_random_statistics(build_model(load_config(SYNTHETIC_CONFIG, overrides).model))
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    result = run_tool(capfd, "export_onnx.py", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                      "--checkpoint", tmp_path / "model.pth", "--out", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    difference = float(result.stdout.split("PyTorch:")[1].split()[0])
    assert difference < 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # the batch dimension stays dynamic

    # The same people through the evaluation's path (crop, flip test, decoding, rescoring):
    # the same keypoints. A random model's heatmaps have near-equal maxima, which a 1e-6
    # difference (another thread count, another backend) flips by a heatmap pixel, so this
    # runs on a model whose heatmap layer has no weights: its heatmaps are exactly flat, both
    # runtimes decode them the same way, and what is compared is the path around the model.
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
    torch.save({"model": model.state_dict()}, tmp_path / "flat.pth")
    result = run_tool(capfd, "export_onnx.py", "--config", SYNTHETIC_CONFIG, *set_args(overrides),
                      "--checkpoint", tmp_path / "flat.pth", "--out", tmp_path / "flat.onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = float(result.stdout.split("max difference")[1].split()[0])
    assert pixels <= 1e-3  # results keep 3 decimals


def test_the_torchscript_exporter_stays_available_and_says_it_is_deprecated(tmp_path):
    pytest.importorskip("onnxruntime")
    from pose.export import export

    model = with_random_statistics(build_model(load_config(SYNTHETIC_CONFIG, SMALL).model))
    with pytest.warns(DeprecationWarning):  # PyTorch's own, kept out of the summary
        difference = export(model, (96, 64), tmp_path / "m.onnx", exporter="torchscript")
    assert difference < 1e-4


def test_browse_dataset_writes_crops_with_targets(synthetic_data, tmp_path, capfd):
    result = run_tool(capfd, "browse_dataset.py", "--config", SYNTHETIC_CONFIG,
                      "--set", f"data.root={synthetic_data}", "--out", tmp_path / "browse",
                      "--count", 5)
    assert result.returncode == 0, result.stderr[-2000:]
    pictures = sorted((tmp_path / "browse").glob("*.png"))
    assert len(pictures) == 5
    crop = cv2.imread(str(pictures[0]))
    height, width = load_config(SYNTHETIC_CONFIG).data.input_size
    assert crop.shape == (height, 2 * width, 3)  # the crop beside its target heatmaps


@pytest.mark.parametrize("clip,geometry", [(False, "reference"), (True, "centred")])
def test_the_inference_path_crops_boxes_as_the_config_says(clip, geometry):
    from pose.data.coco import clip_box
    from pose.data.transforms import box_to_center_scale, crop_matrix, invert_affine
    from pose.estimator import PoseEstimator

    cfg = load_config(SYNTHETIC_CONFIG, ["data.input_size=[64, 32]", "data.padding=1.4",
                                         f"data.clip_detection_boxes={str(clip).lower()}",
                                         f"data.crop_geometry={geometry}"])
    estimator = PoseEstimator(lambda batch: None, cfg)
    image = np.zeros((100, 80, 3), dtype=np.uint8)
    inside, overhanging, outside = [10, 20, 30, 40], [60, -10, 50, 60], [200, 200, 10, 10]
    line, point = [5, 5, 0, 10], [5, 5, 0, 0]
    boxes = [(inside, 0.9), (overhanging, 0.8), (outside, 0.7), (line, 0.6), (point, 0.5)]
    samples = estimator.crops_of(image, boxes, 5)
    # as the reference: a box of zero width is cropped (its size from its height), a point has
    # no crop; a box outside the image is dropped only when clipping
    kept = [0, 1, 3] if clip else [0, 1, 2, 3]
    assert [s["index"] for s in samples] == kept
    for sample, index in zip(samples, kept):
        box = clip_box(boxes[index][0], 80, 100) if clip else boxes[index][0]
        center, scale = box_to_center_scale(box, 32 / 64, cfg.data.padding)
        expected = invert_affine(crop_matrix(center, scale, 0.0, (32, 64), geometry=geometry))
        np.testing.assert_allclose(sample["inv_matrix"].numpy(), expected)
        assert sample["image"].shape == (3, 64, 32) and sample["image_id"] == 5
