"""The classification track: ImageNet-style folders through the same engine, Table 1 through
the grid, Fig. 1 from a classifier, and pose backbones started from a classifier."""
import json
import shutil

import pytest
import torch

from pose.config import load_config
from pose.data.synthetic_shapes import CLASSES, generate

from conftest import ROOT, run_tool_in_process as run_tool

CLS_CONFIG = ROOT / "configs/synthetic/mobilenetv2_x0.5_cls.yaml"
POSE_CONFIG = ROOT / "configs/synthetic/mobilenetv2_x0.5_160x128.yaml"


def set_args(overrides):
    return [a for o in overrides for a in ("--set", o)]


def quick(root, **extra):
    """A schedule of seconds: one thread, one loader process, few epochs."""
    values = {"data.root": str(root), "data.num_workers": 0, "runtime.num_threads": 1,
              "runtime.deterministic": True, "train.epochs": 1, "eval.interval": 1,
              "runtime.log_interval": 5}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), train=800, val=200, seed=1)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """The synthetic classifier on a shorter schedule than its config's (about 35 s): Adam,
    which learns faster than SGD in so few steps."""
    from pose.engine.runner import run_training

    work = tmp_path_factory.mktemp("classifier")
    cfg = load_config(CLS_CONFIG, quick(shapes, **{"train.epochs": 8, "eval.interval": 4,
                                                   "train.optimizer": "adam",
                                                   "train.lr": 2e-3}))
    metrics = run_training(cfg, work)
    return work, metrics


@pytest.mark.slow(seconds=45)
def test_the_synthetic_classifier_learns_and_test_py_agrees(trained, shapes, capfd):
    work, metrics = trained
    chance = 1 / len(CLASSES)
    # 8 short epochs: well above chance (0.395 when written; the config's own 16 epochs on
    # 1600 images reach about 0.87)
    assert metrics["final"]["top1"] >= 2.4 * chance and metrics["final"]["top5"] >= 0.8
    assert metrics["best"]["top1"] >= metrics["final"]["top1"]
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [4, 8] and all("top5" in r for r in evals)
    assert load_config(work / "config.yaml").model.num_classes == len(CLASSES)
    status, out, err = run_tool(capfd, "test", "--config", work / "config.yaml", "--checkpoint",
                                work / "best.pth", "--work-dir", work / "test")
    assert status == 0, err
    tested = json.loads((work / "test/metrics.json").read_text())["final"]
    assert tested["top1"] == metrics["best"]["top1"]
    assert f"top-1 {tested['top1']:.4f}" in out


def test_mixup_mixes_labels_into_distributions_the_loss_takes():
    from pose.data.classification import batch_transform
    from pose.engine.tasks import ClassificationTask

    torch.manual_seed(0)
    mix = batch_transform(4, 0.2)
    batch = mix({"image": torch.rand(6, 3, 8, 8), "label": torch.tensor([0, 1, 2, 3, 0, 1])})
    assert batch["label"].shape == (6, 4)
    torch.testing.assert_close(batch["label"].sum(1), torch.ones(6))
    logits = torch.randn(6, 4)
    loss = ClassificationTask.loss(logits, batch, torch.device("cpu"))
    expected = -(batch["label"] * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    assert batch_transform(4, 0.0) is None


def test_a_pose_backbone_starts_from_the_classifier_and_a_mismatch_is_one_line(
        trained, synthetic_data, tmp_path, capfd):
    from pose.checkpoint import load_checkpoint
    from pose.engine.tasks import PoseTask

    work, _ = trained
    pose = load_config(POSE_CONFIG, [f"data.root={synthetic_data}",
                                     f"model.backbone.init={work / 'best.pth'}"])
    task = PoseTask(pose, train=False)
    model = task.build_model()
    weights = load_checkpoint(work / "best.pth")["model"]
    backbone = model.backbone.state_dict()
    assert set(backbone) == {k for k in weights if not k.startswith("classifier.")}
    for key, value in backbone.items():
        assert torch.equal(value, weights[key]), key
    assert not torch.equal(model.head.state_dict()["final.weight"],
                           torch.zeros_like(model.head.state_dict()["final.weight"]))
    # one file per grid row: {backbone} is the backbone activation's name
    (tmp_path / "relu.pth").write_bytes((work / "best.pth").read_bytes())
    pose.model.backbone.init = str(tmp_path / "{backbone}.pth")
    assert PoseTask(pose, train=False).build_model() is not None
    for override, words in [("model.backbone.act=dyrelu_b",
                             ["model.backbone.act is 'relu' there, 'dyrelu_b' here"]),
                            ("model.backbone.width_mult=0.75",
                             ["model.backbone.width_mult is 0.5 there, 0.75 here"])]:
        status, _, err = run_tool(capfd, "train", "--config", POSE_CONFIG, *set_args(
            [f"data.root={synthetic_data}", f"model.backbone.init={work / 'best.pth'}",
             override]), "--work-dir", tmp_path / "refused")
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and all(w in lines[0] for w in words), err


@pytest.mark.slow(seconds=30)
def test_table1_through_the_grid_and_the_imagenet_dry_run(shapes, tmp_path, capfd):
    status, out, err = run_tool(capfd, "grid", "--config", CLS_CONFIG, "--acts", "relu,dyrelu_b",
                                "--out", tmp_path / "grid", *set_args(quick(shapes)))
    assert status == 0, err
    table = json.loads((tmp_path / "grid/table1.json").read_text())
    assert [row["act"] for row in table["cells"]] == ["relu", "dyrelu_b"]
    for row, name in zip(table["cells"], ("relu", "dyrelu_b")):
        metrics = json.loads((tmp_path / "grid" / name / "seed_0/metrics.json").read_text())
        assert row["mean"]["top1"] == pytest.approx(100 * metrics["final"]["top1"])
    text = (tmp_path / "grid/table1.md").read_text()
    assert "| ReLU |" in text and "| DY-ReLU-B |" in text and "reference" in text
    assert (tmp_path / "grid/table1.png").stat().st_size > 0
    assert {p.name for p in (tmp_path / "grid").iterdir()} >= {"table1.csv", "relu",
                                                                "dyrelu_b"}

    status, out, err = run_tool(capfd, "grid", "--config",
                                ROOT / "configs/imagenet/mobilenetv2_x1.0_cls.yaml", "--dry-run")
    assert status == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "#Param" not in line]
    assert len(rows) == 10  # the ten systems of Table 1
    assert rows[0].startswith("| relu | 3.50M | 300.8M | 3.5M | 300.0M |")
    assert rows[8].startswith("| dyrelu_b | 7.62M |") and rows[8].endswith("| 7.5M | 315.5M |")


def test_fig1_is_drawn_from_a_classifier_checkpoint(shapes, tmp_path, capfd):
    overrides = quick(shapes, **{"model.backbone.act": "dyrelu_b"})
    status, _, err = run_tool(capfd, "train", "--config", CLS_CONFIG, *set_args(overrides),
                              "--work-dir", tmp_path / "b")
    assert status == 0, err
    status, out, err = run_tool(capfd, "plot_dynamics", "--config", tmp_path / "b/config.yaml",
                                "--checkpoint", tmp_path / "b/best.pth", "--images", "16",
                                "--out", tmp_path / "fig1.png")
    assert status == 0, err
    assert (tmp_path / "fig1.png").stat().st_size > 10_000


def break_empty_class(root):
    shutil.rmtree(root / "train" / CLASSES[2])
    (root / "train" / CLASSES[2]).mkdir()
    return root / "train" / CLASSES[2]


def break_stray_file(root):
    stray = root / "train" / CLASSES[0] / "notes.txt"
    stray.write_text("not a picture")
    return stray


def break_truncated_image(root):
    victim = sorted((root / "train" / CLASSES[1]).iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    return victim


def break_val_class(root):
    (root / "val" / CLASSES[3]).rename(root / "val" / "hexagon")
    return root / "val"


@pytest.mark.parametrize("corrupt,words", [
    (break_empty_class, ["holds no image file"]),
    (break_stray_file, ["is not an image file"]),
    (break_truncated_image, ["is truncated"]),
    (break_val_class, ["hexagon not among the training classes"]),
])
def test_bad_image_folders_are_one_line_naming_the_place(tmp_path, capfd, corrupt, words):
    root = generate(tmp_path / "data", train=16, val=8, seed=0)
    culprit = corrupt(root)
    status, _, err = run_tool(capfd, "train", "--config", CLS_CONFIG, *set_args(quick(root)),
                              "--work-dir", tmp_path / "run")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(culprit) in lines[0], lines[0]
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "run").exists()  # found before any work


@pytest.mark.slow(seconds=30)
def test_ddp_on_two_cpu_processes_scores_every_validation_image_once(tmp_path):
    import os
    import subprocess
    import sys

    from pose.engine.runner import run_test
    from test_engine import free_port

    # 9 validation images: the sampler pads one rank's shard with a repeat, which the
    # evaluation must count once
    root = generate(tmp_path / "data", train=32, val=9, seed=2)
    overrides = quick(root, **{"train.batch_size": 8})
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", str(ROOT / "tools/train.py"), "--config",
         str(CLS_CONFIG), "--work-dir", str(tmp_path / "ddp"), *set_args(overrides)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["final"]["images"] == 9
    single = run_test(load_config(tmp_path / "ddp/config.yaml"), tmp_path / "single",
                      checkpoint=str(tmp_path / "ddp/latest.pth"))
    assert single["final"] == pytest.approx(metrics["final"], abs=1e-9)


def test_pose_only_test_options_are_one_line_for_a_classifier(trained, capfd):
    work, _ = trained
    for args, words in [(["--oracle"], "a classifier has none"),
                        (["--checkpoint", work / "best.pth", "--gt-boxes"], "--gt-boxes")]:
        status, _, err = run_tool(capfd, "test", "--config", work / "config.yaml", *args,
                                  "--work-dir", work / "refused")
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and words in lines[0], err
