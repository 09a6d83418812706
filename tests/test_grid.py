import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pose.grid import act_label, parse_acts, run_grid
from pose.models.activations import resolved_activation

from conftest import ROOT
from test_engine import SYNTHETIC_CONFIG, tiny_overrides

COCO_CONFIG = ROOT / "configs/coco/mobilenetv2_x0.5_256x192.yaml"


def grid_overrides(data_root):
    values = tiny_overrides(data_root, **{"train.epochs": 1, "train.max_iters_per_epoch": 1})
    return [v for v in values if not v.startswith(("model.backbone.act", "model.head.act"))]


def events(out):
    path = out / "grid_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_parse_acts_accepts_names_and_yaml_specs():
    assert parse_acts("relu,prelu,dyrelu_c") == ["relu", "prelu", "dyrelu_c"]
    specs = parse_acts("[relu, {name: dyrelu_c, k: 3}]")
    assert specs[1] == {"name": "dyrelu_c", "k": 3}
    assert act_label(specs[1]) == "dyrelu_c-k3"
    assert resolved_activation("dyrelu_b")["reduction"] == 13
    with pytest.raises(ValueError, match="unknown activation 'rleu'"):
        parse_acts("relu,rleu")


def test_dry_run_lists_the_16_paper_cells_without_coco():
    result = subprocess.run([sys.executable, str(ROOT / "tools/grid.py"), "--config",
                             str(COCO_CONFIG), "--dry-run", "--out", "/tmp/never-written"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    folders = [line for line in result.stdout.splitlines() if "folder:" in line]
    assert len(folders) == 16
    assert "/tmp/never-written/dyrelu_c__dyrelu_a" in result.stdout
    assert "'reduction': 13" in result.stdout
    assert not os.path.exists("/tmp/never-written")


@pytest.mark.slow(seconds=80)
def test_interrupted_grid_with_seeds_reruns_no_finished_run_and_writes_all_tables(
        synthetic_data, tmp_path):
    out = tmp_path / "grid"
    # Two activations x two seeds (8 runs): enough to interrupt and resume, with Table 1's
    # Maxout and the synthetic config's DY-ReLU-C reading labelled in the tables.
    command = [sys.executable, str(ROOT / "tools/grid.py"), "--config", str(SYNTHETIC_CONFIG),
               "--out", str(out), "--jobs", "2", "--seeds", "2", "--acts",
               "[maxout, {name: dyrelu_c, spatial: residual}]"]
    for override in grid_overrides(synthetic_data):
        command += ["--set", override]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while sum(e["event"] == "finished" for e in events(out)) < 3:
        assert first.poll() is None and time.time() < deadline, "grid ended or hung early"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the grid and its running cells
    first.wait()
    # Complete runs: a run may have written metrics.json just before the kill, without
    # its "finished" event, so ask the folders.
    done_before = {str(p.parent.relative_to(out)) for p in out.glob("*/seed_*/metrics.json")}
    assert len(done_before) >= 3
    mtimes = {c: (out / c / "metrics.json").stat().st_mtime_ns for c in done_before}
    lines_before = len(events(out))

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rerun = events(out)[lines_before:]
    started_again = {e["cell"] for e in rerun if e["event"] == "started"}
    assert not started_again & done_before
    assert {e["cell"] for e in rerun if e["event"] == "skipped"} == done_before
    assert len(started_again) + len(done_before) == 8  # every (cell, seed) trained once
    for cell, mtime in mtimes.items():
        assert (out / cell / "metrics.json").stat().st_mtime_ns == mtime

    for name in ("table2.md", "table2.csv", "table2.json", "table2.png"):
        assert (out / name).is_file()
    table = json.loads((out / "table2.json").read_text())
    assert len(table["cells"]) == 4 and table["reference"] == ["maxout", "maxout"]
    for cell in table["cells"]:
        assert cell["status"] == "finished" and cell["n"] == 2
        assert [r["seed"] for r in cell["runs"]] == [0, 1]
        assert all(len(r["stats"]) == 10 for r in cell["runs"])
        seeds_ap = [r["stats"]["AP"] for r in cell["runs"]]
        assert cell["stats"]["AP"] == pytest.approx(sum(seeds_ap) / 2)
        assert cell["std"]["AP"] == pytest.approx(abs(seeds_ap[0] - seeds_ap[1]) / 2 ** 0.5)
        assert (out / cell["folder"] / "seed_1/latest.pth").is_file()
    seed_configs = [yaml.safe_load((out / table["cells"][0]["folder"] / f"seed_{s}/config.yaml")
                                   .read_text()) for s in (0, 1)]
    assert [c["runtime"]["seed"] for c in seed_configs] == [0, 1]
    rows = list(csv.DictReader((out / "table2.csv").open()))
    assert len(rows) == 4 and rows[0]["backbone"] == "maxout" and rows[0]["n"] == "2"
    assert rows[1]["dAP_low"] and rows[0]["dAP"] == "0.00"
    markdown = (out / "table2.md").read_text()
    for label in ("| Maxout |", "| DY-ReLU-C (spatial=residual) |", " ± ", "(n=2)",
                  "Paired differences to Maxout / Maxout", "reference", "Seed noise"):
        assert label in markdown
    assert table["noise"]["pooled_df"] == 4 and table["noise"]["residual_df"] == 3
    assert "synthetic" in markdown
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_differences_and_their_intervals():
    from pose.report import _difference_text, aggregate, paired_difference

    # n = 3: mean 2, sample std 1, t(0.975, 2) = 4.303 (statistical tables)
    d = paired_difference([12.0, 13.0, 11.0], [10.0, 10.0, 10.0])
    assert d["mean"] == pytest.approx(2.0) and d["n"] == 3
    assert d["high"] - d["mean"] == pytest.approx(4.303 / 3 ** 0.5, abs=1e-3)
    assert not d["excludes_zero"]  # 2 +- 2.48
    tight = paired_difference([12.0, 12.1, 11.9, 12.0], [10.0] * 4)
    assert tight["excludes_zero"] and tight["low"] > 0
    single = paired_difference([12.0], [10.0])
    assert single["low"] is None and not single["excludes_zero"]

    def run(backbone, head, seed, ap, status="finished"):
        stats = {name: ap for name in ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50",
                                       "AR75", "ARM", "ARL")}
        return {"backbone": backbone, "head": head, "seed": seed, "folder": f"g/{backbone}__"
                f"{head}/seed_{seed}", "status": status,
                "stats": stats if status == "finished" else None, "params": 1, "madds": 1,
                "train_time_s": 10.0, "log": "train.log"}

    runs = [run("relu", "relu", 0, 0.10), run("relu", "relu", 1, 0.12),
            run("relu", "relu", 2, 0.11),
            run("relu", "dyrelu_c", 0, 0.13), run("relu", "dyrelu_c", 1, 0.15),
            run("relu", "dyrelu_c", 2, 0.0, status="failed")]
    reference, cell = aggregate(runs, ("relu", "relu"))
    assert reference["stats"]["AP"] == pytest.approx(0.11)
    assert reference["std"]["AP"] == pytest.approx(0.01)
    assert cell["status"] == "failed" and cell["n"] == 2 and cell["seeds"] == 3
    # paired by seed: seeds 0 and 1 only (seed 2 failed), differences 3 and 3 AP
    assert cell["difference"]["n"] == 2 and cell["difference"]["mean"] == pytest.approx(3.0)
    assert cell["difference"]["low"] == pytest.approx(3.0)  # no spread: a zero-width interval
    assert _difference_text(reference, ("relu", "relu")) == "reference"
    assert _difference_text(cell, ("relu", "relu")) == "+3.0 [+3.0, +3.0] *"


def test_seed_noise_matches_least_squares_fits_of_the_cell_and_seed_models():
    from scipy import stats

    from pose.report import _noise_text, seed_noise

    rng = np.random.default_rng(0)
    ap = 70 + rng.normal(0, 3, (4, 3)) + np.array([0.0, 2.0, -1.0])  # 4 cells x 3 seeds
    rows = [{"runs": [{"seed": s, "stats": {"AP": ap[c, s] / 100}} for s in range(3)]}
            for c in range(4)]
    rows[3]["runs"][2]["stats"] = None  # a failed run: seed 2 is not common to every cell
    rows.append({"runs": [{"seed": 0, "stats": None}]})  # a cell with nothing finished
    noise = seed_noise(rows)

    def residual_std(values, columns):
        design = np.stack(columns, axis=1).astype(float)
        fit = np.linalg.lstsq(design, values, rcond=None)[0]
        return math.sqrt(((values - design @ fit) ** 2).sum()
                         / (len(values) - np.linalg.matrix_rank(design)))

    # pooled: every finished run, one mean per cell (11 runs, 4 cells: 7 dof)
    cell_of = [c for c in range(4) for s in range(3) if (c, s) != (3, 2)]
    values = np.array([ap[c, s] for c in range(4) for s in range(3) if (c, s) != (3, 2)])
    pooled = residual_std(values, [np.equal(cell_of, c) for c in range(4)])
    assert noise["pooled_std"] == pytest.approx(pooled) and noise["pooled_df"] == 7
    # blocks: seeds 0 and 1 in all 4 cells, a mean per cell plus a shift per seed (3 dof)
    cell_of, seed_of = np.repeat(np.arange(4), 2), np.tile(np.arange(2), 4)
    sigma = residual_std(ap[:, :2].reshape(-1),
                         [np.equal(cell_of, c) for c in range(4)] + [np.equal(seed_of, 1)])
    assert noise["residual_std"] == pytest.approx(sigma) and noise["residual_df"] == 3
    assert noise["paired_se"] == pytest.approx(sigma)  # sqrt(2 / 2)

    def half_width(n):
        return stats.t.ppf(0.975, 3 * (n - 1)) * sigma * math.sqrt(2 / n)

    assert noise["paired_half_width"] == pytest.approx(half_width(2))
    for target, n in noise["seeds_for_half_width"].items():
        assert half_width(n) <= float(target) and (n == 2 or float(target) < half_width(n - 1))
    assert "--seeds" in _noise_text(noise)[1]
    assert seed_noise([{"runs": [{"seed": 0, "stats": {"AP": 0.5}}]}] * 3) is None


def test_the_synthetic_config_grids_its_own_activations():
    result = subprocess.run([sys.executable, str(ROOT / "tools/grid.py"), "--config",
                             str(SYNTHETIC_CONFIG), "--dry-run", "--out", "/tmp/never-written"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert sum("folder:" in line for line in result.stdout.splitlines()) == 16
    # grid.acts: DY-ReLU-C with its attention on the residuals
    assert "/tmp/never-written/dyrelu_c-spatialresidual__relu" in result.stdout


def test_a_failing_cell_is_reported_and_the_others_finish(synthetic_data, tmp_path):
    # k = 0 passes the grid's spec check but makes DyReLU raise when the cell builds it.
    acts = parse_acts("[relu, {name: dyrelu_b, k: 0}]")
    table = run_grid(SYNTHETIC_CONFIG, acts, tmp_path / "grid", grid_overrides(synthetic_data),
                     jobs=2)
    status = {(json.dumps(c["backbone"]), json.dumps(c["head"])): c["status"]
              for c in table["cells"]}
    assert status[('"relu"', '"relu"')] == "finished"
    assert sorted(status.values()) == ["failed", "failed", "failed", "finished"]
    failed = [c for c in table["cells"] if c["status"] == "failed"]
    assert all("k must be >= 1" in open(c["log"]).read() for c in failed)
    assert "failed" in (tmp_path / "grid/table2.md").read_text()


def test_a_finished_cell_of_another_config_is_not_taken_as_this_ones(synthetic_data, tmp_path):
    out, overrides = tmp_path / "grid", grid_overrides(synthetic_data)
    run_grid(SYNTHETIC_CONFIG, ["relu"], out, overrides)
    # The same cell folder, the same number of epochs, another input size.
    table = run_grid(SYNTHETIC_CONFIG, ["relu"], out, overrides + ["data.input_size=[128, 96]"])
    cell = table["cells"][0]
    assert cell["status"] == "failed"
    assert "holds a run of another config (data.input_size: [96, 64] there, [128, 96] now)" \
        in open(cell["log"]).read()
    assert [e["event"] for e in events(out)].count("skipped") == 0


def test_cells_go_through_a_submitit_executor(synthetic_data, tmp_path):
    import submitit

    executor = submitit.LocalExecutor(folder=str(tmp_path / "submitit"))
    executor.update_parameters(timeout_min=10)
    table = run_grid(SYNTHETIC_CONFIG, ["relu"], tmp_path / "grid",
                     grid_overrides(synthetic_data), launcher="slurm", executor=executor)
    assert [c["status"] for c in table["cells"]] == ["finished"]
    assert any((tmp_path / "submitit").iterdir())
    started = [e for e in events(tmp_path / "grid") if e["event"] == "started"]
    assert started and started[0]["job_id"]


TABLE1_ACTS = "relu,prelu,se_relu,maxout,dyrelu_b,dyrelu_c"


def test_every_pairing_of_table1_activations_builds_and_takes_a_training_step(synthetic_data):
    import torch

    from pose.data.build import build_dataset
    from pose.engine.loop import build_optimizer, heatmap_loss
    from pose.models import build_model

    from test_engine import tiny_config

    acts = parse_acts(TABLE1_ACTS)
    batch = None
    for backbone in acts:
        for head in acts:
            cfg = tiny_config(synthetic_data, **{"model.backbone.act": backbone,
                                                 "model.head.act": head})
            if batch is None:
                dataset = build_dataset(cfg, train=True)
                batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
            torch.manual_seed(0)
            model = build_model(cfg.model)
            optimizer = build_optimizer(model, cfg.train)
            before = [p.detach().clone() for p in model.parameters()]
            loss = heatmap_loss(model(batch["image"]), batch["heatmaps"], batch["weights"])
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss), (backbone, head)
            params = list(model.parameters())
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
            # Every parameter with a gradient moves (an SE gate's hidden ReLUs may all be
            # off for a batch, leaving its first FC without one).
            for old, p in zip(before, params):
                assert torch.equal(old, p) == (not p.grad.any()), (backbone, head)
