import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from pose.complexity import count_madds
from pose.models import DyReLU

ROOT = Path(__file__).resolve().parents[1]
CLS_CONFIG = ROOT / "configs/imagenet/mobilenetv2_x1.0_cls.yaml"


def run_complexity(*overrides):
    args = [sys.executable, str(ROOT / "tools/complexity.py"), "--config", str(CLS_CONFIG),
            "--json"]
    for override in overrides:
        args += ["--set", override]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_conv_and_linear_madds_match_hand_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(),
                          nn.Linear(8 * 10 * 10, 5))
    expected = 8 * 10 * 10 * 3 * 9 + 800 * 5
    assert count_madds(model, (1, 3, 10, 10)) == expected


def test_dyrelu_madds_are_hyper_function_plus_k_per_element():
    module = DyReLU(16, variant="c", k=3, reduction=4)
    hidden = 4
    expected = (16 * hidden + hidden * 16 * 6  # two FCs
                + 16 * 7 * 5  # 1x1 spatial conv C -> 1
                + 3 * 16 * 7 * 5)  # K per element
    assert count_madds(module, (1, 16, 7, 5)) == expected


def within(value, target, tolerance=0.02):
    return abs(value / target - 1) <= tolerance


def test_relu_classifier_matches_paper_table1_complexity():
    result = run_complexity()
    assert within(result["params"], 3.5e6) and within(result["madds"], 300.0e6)


@pytest.mark.parametrize("k,params,madds", [(2, 7.5e6, 315.5e6), (3, 9.2e6, 322.8e6)])
def test_default_dyrelu_b_matches_paper_table1_complexity(k, params, madds):
    result = run_complexity(f"model.backbone.act={{name: dyrelu_b, k: {k}}}")
    assert within(result["params"], params) and within(result["madds"], madds)

