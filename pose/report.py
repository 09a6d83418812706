"""Grid tables: table2.md, table2.csv, table2.json and table2.png from the cells' metrics."""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from pose.complexity import complexity
from pose.config import Config
from pose.evaluation.coco_eval import STAT_NAMES
from pose.models import build_model
from pose.activation_spec import parse_activation
from pose.utils import atomic_write, atomic_write_json, atomic_write_text

# Supplementary Table 2 (AP x 100): PAPER_AP[backbone][head].
PAPER_AP = {
    "relu": {"relu": 59.2, "dyrelu_a": 57.0, "dyrelu_b": 58.4, "dyrelu_c": 61.0},
    "dyrelu_a": {"relu": 58.8, "dyrelu_a": 51.5, "dyrelu_b": 56.5, "dyrelu_c": 62.4},
    "dyrelu_b": {"relu": 61.5, "dyrelu_a": 54.3, "dyrelu_b": 58.6, "dyrelu_c": 63.2},
    "dyrelu_c": {"relu": 61.9, "dyrelu_a": 53.5, "dyrelu_b": 58.8, "dyrelu_c": 63.3},
}
PRETTY = {"relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "prelu": "PReLU",
          "prelu_shared": "PReLU (shared)", "rrelu": "RReLU", "se_relu": "SE+ReLU",
          "maxout": "Maxout", "dyrelu_a": "DY-ReLU-A", "dyrelu_b": "DY-ReLU-B",
          "dyrelu_c": "DY-ReLU-C"}


def pretty_label(spec: Any) -> str:
    name, options = parse_activation(spec)
    text = PRETTY.get(name, name)
    return text + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def is_paper_setting(cfg: Config) -> bool:
    """COCO val2017 with detector boxes at 256x192, MobileNetV2 x0.5: Table 2's setting."""
    return (cfg.data.input_size == [256, 192] and cfg.model.backbone.width_mult == 0.5
            and cfg.data.val_ann.endswith("person_keypoints_val2017.json")
            and not cfg.eval.use_gt_boxes)


def setting_line(cfg: Config) -> str:
    boxes = "ground-truth boxes" if cfg.eval.use_gt_boxes else f"detector boxes ({cfg.data.det_file})"
    data = "synthetic stick figures" if "synthetic" in cfg.data.root else "COCO-format data"
    return (f"Data: {data} at `{cfg.data.root}` (val: `{cfg.data.val_ann}`); input "
            f"{cfg.data.input_size[0]}x{cfg.data.input_size[1]}; {cfg.train.epochs} epochs; "
            f"{boxes}; flip test {'on' if cfg.eval.flip_test else 'off'}.")


def _paper_value(backbone: Any, head: Any):
    b, b_opts = parse_activation(backbone)
    h, h_opts = parse_activation(head)
    if b_opts or h_opts:
        return None
    return PAPER_AP.get(b, {}).get(h)


def collect(cfg: Config, cells, status: dict[str, str]) -> list[dict]:
    height, width = cfg.data.input_size
    rows, cost_cache = [], {}
    for cell in cells:
        metrics = cell.metrics()
        key = json.dumps([cell.backbone, cell.head])
        if key not in cost_cache:
            model_cfg = copy.deepcopy(cfg.model)
            model_cfg.backbone.act, model_cfg.head.act = cell.backbone, cell.head
            try:
                cost_cache[key] = complexity(build_model(model_cfg), (1, 3, height, width))
            except Exception:  # the cell's own log says why its model cannot be built
                cost_cache[key] = {"params": None, "madds": None}
        complete = cell.is_complete(cfg.train.epochs, metrics)
        rows.append({
            "backbone": cell.backbone, "head": cell.head, "folder": str(cell.folder),
            "status": "finished" if complete else status.get(cell.name, "not run"),
            "stats": metrics.get("final") if complete else None,
            "params": cost_cache[key]["params"], "madds": cost_cache[key]["madds"],
            "train_time_s": metrics.get("train_time_s"),
            "log": str(cell.log_path),
            "paper_ap": _paper_value(cell.backbone, cell.head),
        })
    return rows


def _ap_text(row: dict, with_paper: bool) -> str:
    if row["stats"] is None:
        return row["status"]
    ap = 100 * row["stats"]["AP"]
    if with_paper and row["paper_ap"] is not None:
        return f"{ap:.1f} ({row['paper_ap']:.1f}, {ap - row['paper_ap']:+.1f})"
    return f"{ap:.1f}"


def markdown(cfg: Config, acts: Sequence[Any], rows: list[dict]) -> str:
    paper = is_paper_setting(cfg)
    n = len(acts)
    grid = [rows[i * n:(i + 1) * n] for i in range(n)]
    heads = [pretty_label(a) for a in acts]
    lines = ["# Table 2: COCO keypoint AP, backbone activation (rows) x head activation "
             "(columns)", "", setting_line(cfg), ""]
    if paper:
        lines += ["Each cell: our AP (paper's AP, difference).", ""]
    lines.append("| backbone \\ head | " + " | ".join(heads) + " |")
    lines.append("|---" * (n + 1) + "|")
    for act, row in zip(acts, grid):
        lines.append(f"| {pretty_label(act)} | " + " | ".join(_ap_text(r, paper) for r in row)
                     + " |")
    lines += ["", "Params (M) / MAdds (M) / training time (s):", "",
              "| backbone \\ head | " + " | ".join(heads) + " |", "|---" * (n + 1) + "|"]
    for act, row in zip(acts, grid):
        cells = [(f"{r['params'] / 1e6:.2f} / {r['madds'] / 1e6:.0f}" if r["params"] is not None
                  else "- / -") + f" / {r['train_time_s'] if r['train_time_s'] is not None else '-'}"
                 for r in row]
        lines.append(f"| {pretty_label(act)} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed cells:"] + [f"- {r['folder']}: see {r['log']}" for r in failed]
    if not paper and all(parse_activation(a)[0] in PAPER_AP and not parse_activation(a)[1]
                         for a in acts):
        lines += ["", "The paper's Table 2 (COCO val2017, 256x192, detector boxes), for "
                  "reference only: this run's setting differs, so its numbers are not "
                  "comparable.", "",
                  "| backbone \\ head | " + " | ".join(heads) + " |", "|---" * (n + 1) + "|"]
        for act in acts:
            lines.append(f"| {pretty_label(act)} | " + " | ".join(
                f"{PAPER_AP[act][h]:.1f}" for h in acts) + " |")
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    """None -> empty field; an activation mapping -> its JSON text."""
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, dict) else value


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["backbone", "head", "status", *STAT_NAMES, "params", "madds",
                     "train_time_s", "paper_AP", "folder"])
    for r in rows:
        stats = [f"{r['stats'][s]:.4f}" if r["stats"] else "" for s in STAT_NAMES]
        writer.writerow([_csv_value(r[key]) for key in ("backbone", "head", "status")] + stats
                        + [_csv_value(r[key]) for key in ("params", "madds", "train_time_s",
                                                           "paper_ap", "folder")])
    return buffer.getvalue()


def heatmap_png(cfg: Config, acts: Sequence[Any], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(acts)
    values = np.array([100 * r["stats"]["AP"] if r["stats"] else math.nan for r in rows])
    values = values.reshape(n, n)
    fig, ax = plt.subplots(figsize=(1.6 * n + 2.5, 1.3 * n + 1.8))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
    labels = [pretty_label(a) for a in acts]
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("head activation")
    ax.set_ylabel("backbone activation")
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(n):
        for j in range(n):
            text = "failed" if not np.isfinite(values[i, j]) else f"{values[i, j]:.1f}"
            colour = "white" if not np.isfinite(values[i, j]) or values[i, j] < middle else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=11)
    fig.colorbar(image, ax=ax, label="AP x 100")
    data = "synthetic" if "synthetic" in cfg.data.root else "COCO"
    ax.set_title(f"AP grid, {data}, {cfg.data.input_size[0]}x{cfg.data.input_size[1]}, "
                 f"{cfg.train.epochs} epochs", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)


def write_tables(cfg: Config, acts: Sequence[Any], cells, status: dict[str, str],
                 out: Path) -> dict:
    rows = collect(cfg, cells, status)
    table = {"setting": setting_line(cfg), "paper_setting": is_paper_setting(cfg),
             "acts": list(acts), "cells": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "table2.json", table)
    atomic_write_text(out / "table2.csv", csv_text(rows))
    text = markdown(cfg, acts, rows)
    atomic_write_text(out / "table2.md", text)
    heatmap_png(cfg, acts, rows, out / "table2.png")
    print(text)
    return table
