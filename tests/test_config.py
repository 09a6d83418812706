import subprocess
import sys

import pytest
import yaml

from pose.config import ConfigError, load_config, save_config

from conftest import ROOT, run_tool_in_process

COCO_CONFIG = ROOT / "configs/coco/mobilenetv2_x0.5_256x192.yaml"
SYNTHETIC_CONFIG = ROOT / "configs/synthetic/mobilenetv2_x0.5_160x128.yaml"


def test_paper_config_loads_with_its_settings():
    cfg = load_config(COCO_CONFIG)
    assert cfg.model.backbone.width_mult == 0.5 and cfg.data.input_size == [256, 192]
    assert cfg.train.epochs == 210 and cfg.train.milestones == [170, 200]


def test_base_file_is_inherited_and_overridden():
    cfg = load_config(SYNTHETIC_CONFIG)
    assert cfg.data.input_size == [160, 128]  # overridden
    assert cfg.model.head.channels == [128, 64, 32]  # inherited
    assert cfg.train.optimizer == "adam"


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'; did you mean "
                                          r"'train.lr'\?"):
        load_config(path)


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ConfigError, match=r"'train.epochs': expected int, got 'ten' \(str\)"):
        load_config(COCO_CONFIG, ["train.epochs=ten"])


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config(COCO_CONFIG, ["train.lr=5e-4", "model.head.act={name: dyrelu_c, k: 3}",
                                    "data.input_size=[128, 96]"])
    assert cfg.train.lr == 5e-4
    assert cfg.model.head.act == {"name": "dyrelu_c", "k": 3}
    assert cfg.data.input_size == [128, 96]
    with pytest.raises(ConfigError, match="model.backbone.act.*unknown activation 'dyrelu_x'"):
        load_config(COCO_CONFIG, ["model.backbone.act=dyrelu_x"])
    with pytest.raises(ConfigError, match="'train.amp': 'fp8' is not one of none, fp16, bf16"):
        load_config(COCO_CONFIG, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="'data.input_size'.*multiple of 32"):
        load_config(COCO_CONFIG, ["data.input_size=[64, 48]"])


def test_grid_acts_default_to_the_four_variants_and_are_validated():
    assert load_config(COCO_CONFIG).grid.acts == ["relu", "dyrelu_a", "dyrelu_b", "dyrelu_c"]
    synthetic = load_config(SYNTHETIC_CONFIG).grid.acts
    assert synthetic[-1] == {"name": "dyrelu_c", "spatial": "residual"}
    with pytest.raises(ConfigError, match=r"'grid.acts\[1\]'.*unknown activation 'dyrelu_d'"):
        load_config(COCO_CONFIG, ["grid.acts=[relu, dyrelu_d]"])
    with pytest.raises(ConfigError, match="'grid.acts': needs at least one"):
        load_config(COCO_CONFIG, ["grid.acts=[]"])
    with pytest.raises(ConfigError, match="'grid.acts': expected a list of Any, got 'relu'"):
        load_config(COCO_CONFIG, ["grid.acts=relu"])


def test_saved_config_reloads_to_the_same_config(tmp_path):
    cfg = load_config(SYNTHETIC_CONFIG, ["model.head.act=dyrelu_b"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert "_base_" not in yaml.safe_load((tmp_path / "config.yaml").read_text())


@pytest.mark.parametrize("tool,args,message", [
    ("train", ["--config", SYNTHETIC_CONFIG, "--set", "train.epoch=3"],
     "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ("train", ["--config", SYNTHETIC_CONFIG, "--set", "train.lr=fast"],
     "'train.lr': expected float, got 'fast'"),
    ("train", ["--config", SYNTHETIC_CONFIG, "--set", "data.root=/nonexistent/coco"],
     "annotation file not found: /nonexistent/coco/annotations/person_keypoints_train.json"),
    ("test", ["--config", SYNTHETIC_CONFIG, "--checkpoint", "/nonexistent/best.pth"],
     "checkpoint not found: /nonexistent/best.pth"),
])
def test_expected_mistakes_are_one_line_errors_with_nonzero_exit(tool, args, message, capfd):
    # In this process, through the tools' own entry point (pose.cli.run); the test below runs
    # one mistake as a real command line.
    code, out, err = run_tool_in_process(capfd, tool, *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_mistake_on_the_command_line_is_one_line_and_exit_status_2():
    result = subprocess.run([sys.executable, "tools/train.py", "--config", "configs/nope.yaml"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: config file not found")
