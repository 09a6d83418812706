"""benchmarks/gpu_check.py, the one script the GPU machine runs: end to end on the CPU (tiny
sizes), and its verdicts on given benchmark rows."""
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow(seconds=25)
def test_every_part_runs_end_to_end_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu",
                           "--out", str(tmp_path), "--budget", "240"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # what comes back from the GPU machine: the summary and one log per part, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "layer.log", "summary.json", "summary.md", "tests.log", "train_step.log",
        "training.log"]
    rows = {row["check"]: row for row in json.loads((tmp_path / "summary.json").read_text())}
    assert rows["CUDA correctness tests"]["result"] == "skipped"
    assert "no CUDA device" in rows["CUDA correctness tests"]["detail"]
    layer = rows["one layer, DY-ReLU-C / ReLU"]
    assert layer["result"] == "ok" and layer["detail"].startswith("2x8x16x12: ")
    step = rows["train step C/C / ReLU/ReLU, eager"]
    assert step["result"] == "ok" and "x time" in step["detail"]
    assert rows["synthetic training"]["result"] == "ok"
    assert "(falls)" in rows["synthetic training"]["detail"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| synthetic training | ok |" in summary
    assert "Every part ran (the targets are judged on CUDA only)." in summary


def step_row(compiled, time_ratio, memory_ratio, backbone="dyrelu_c", head="dyrelu_c"):
    return {"backbone": backbone, "head": head, "compiled": compiled, "revision": "",
            "images_per_s": 100.0, "time_ratio": time_ratio, "memory_bytes": 1,
            "memory_ratio": memory_ratio, "memory_kind": "peak MB"}


def test_train_step_targets_are_judged_on_cuda_only():
    check = gpu_check()
    rows = [step_row(False, 1.0, 1.0, "relu", "relu"), step_row(False, 1.30, 1.2),
            step_row(True, 1.25, 1.5), step_row(True, 1.1, 1.51, "relu", "dyrelu_c")]
    verdicts = {r.check: r.result for r in check.train_step_rows(rows, 1.0, judged=True)}
    assert verdicts == {"train step C/C / ReLU/ReLU, eager": "MISSED",  # 1.30x time
                        "train step C/C / ReLU/ReLU, compiled": "ok"}  # on both bounds
    assert {r.result for r in check.train_step_rows(rows, 1.0, judged=False)} == {"ok"}
    assert check.train_step_rows(rows[:1], 1.0, judged=True)[0].result == "FAILED"


def test_training_falls_only_when_the_last_losses_are_below_the_first(tmp_path):
    check = gpu_check()
    log = tmp_path / "log.jsonl"
    for losses, verdict in [([4, 3, 2, 1], "ok"), ([1, 2, 3, 4], "FAILED"), ([3, 2, 1], "FAILED")]:
        log.write_text("\n".join(json.dumps({"kind": "train", "loss": v}) for v in losses))
        assert check.training_row(log, 0, "", 1.0).result == verdict, losses
    assert check.training_row(tmp_path / "none.jsonl", 124, "...", 1.0).result == "FAILED"


def test_test_counts_are_read_from_pytest_output():
    check = gpu_check()
    passed = check.tests_row(0, "34 passed, 2 skipped in 60.1s", 60.0, "cuda")
    assert passed.result == "ok" and passed.detail == "34 passed, 2 skipped"
    assert check.tests_row(1, "1 failed, 33 passed in 60s", 60.0, "cuda").result == "FAILED"
    assert check.tests_row(0, "36 skipped in 1s", 1.0, "cuda").result == "skipped"
