"""Table 1 (a classifier's activations side by side): table1.md, .csv, .json and .png.

``tools/grid.py`` on a ``model.type: classifier`` config runs one training per activation
(and seed) instead of the pose grid's backbone x head pairs; this module turns those runs'
metrics.json into the table: parameters and MAdds (``pose.complexity``), top-1 and top-5 (x 100,
mean ± std over seeds), and each activation's top-1 difference to the reference (ReLU unless
``--reference`` says) paired by seed, with its 95% Student-t interval. In the ImageNet setting
(MobileNetV2 x1.0 at 224x224) the paper's numbers stand beside ours.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pose.complexity import TABLE1, complexity
from pose.config import Config
from pose.models import build_model
from pose.report import paired_difference, pretty_label
from pose.utils import atomic_write, atomic_write_json, atomic_write_text

# The supplementary's Table 1 accuracies (top-1, top-5), in the order of pose.complexity.TABLE1.
PAPER_ACCURACY = ((72.0, 91.0), (72.5, 90.8), (72.7, 90.8), (72.9, 91.0), (73.3, 91.2),
                  (74.2, 91.9), (75.1, 92.3), (75.8, 92.7), (76.2, 93.1), (76.2, 93.2))


def _key(spec: Any) -> str:
    from pose.activation_spec import resolved_activation

    return json.dumps(resolved_activation(spec), sort_keys=True)


PAPER_ROWS = {_key(spec): {"row": label, "params": params, "madds": madds, "top1": top1,
                           "top5": top5}
              for (label, spec, params, madds), (top1, top5) in zip(TABLE1, PAPER_ACCURACY)}


def is_imagenet_setting(cfg: Config) -> bool:
    """MobileNetV2 x1.0 at 224x224 on an ImageNet folder: Table 1's setting."""
    return (cfg.model.backbone.width_mult == 1.0 and cfg.data.image_size == [224, 224]
            and "imagenet" in cfg.data.root.lower())


def paper_row(spec: Any) -> Optional[dict]:
    return PAPER_ROWS.get(_key(spec))


def cost(cfg: Config, spec: Any, num_classes: Optional[int]) -> dict[str, int]:
    """Parameters and MAdds of the classifier with ``spec`` at every activation position."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.act = spec
    model_cfg.num_classes = num_classes or model_cfg.num_classes
    return complexity(build_model(model_cfg), (1, 3, *cfg.data.image_size))


def rows_of(cfg: Config, acts: Sequence[Any], cells, status: dict[str, str],
            reference: Any) -> list[dict]:
    """One row per activation: each seed's run, the means and stds, the paired difference."""
    runs: dict[str, list[dict]] = {}
    classes = None
    for cell in cells:
        metrics = cell.metrics()
        done = cell.is_complete(cfg.train.epochs, metrics) and status.get(cell.name) != "failed"
        classes = classes or metrics.get("classes")
        runs.setdefault(_key(cell.backbone), []).append({
            "seed": cell.seed, "folder": str(cell.folder), "log": str(cell.log_path),
            "status": "finished" if done else status.get(cell.name, "not run"),
            "stats": metrics.get("final") if done else None,
            "train_time_s": metrics.get("train_time_s")})
    reference_top1 = {r["seed"]: r["stats"]["top1"] for r in runs.get(_key(reference), [])
                      if r["stats"]}
    rows = []
    for spec in acts:
        seeds = runs.get(_key(spec), [])
        done = [r for r in seeds if r["stats"]]
        mean = {k: 100 * float(np.mean([r["stats"][k] for r in done])) for k in ("top1", "top5")} \
            if done else None
        std = {k: 100 * float(np.std([r["stats"][k] for r in done], ddof=1))
               for k in ("top1", "top5")} if len(done) > 1 else None
        paired = [r for r in done if r["seed"] in reference_top1]
        rows.append({
            "act": spec, "label": pretty_label(spec), "n": len(done), "seeds": len(seeds),
            "status": "finished" if seeds and all(r["status"] == "finished" for r in seeds)
            else "failed" if any(r["status"] == "failed" for r in seeds) else "not run",
            "mean": mean, "std": std, "runs": seeds,
            "difference": paired_difference([100 * r["stats"]["top1"] for r in paired],
                                            [100 * reference_top1[r["seed"]] for r in paired]),
            **cost(cfg, spec, classes), "paper": paper_row(spec)})
    return rows


def _value(row: dict, key: str) -> str:
    if not row["mean"]:
        return row["status"]
    spread = f" ± {row['std'][key]:.1f}" if row["std"] else ""
    return f"{row['mean'][key]:.1f}{spread} (n={row['n']})"


def _difference(row: dict, reference: Any) -> str:
    d = row["difference"]
    if _key(row["act"]) == _key(reference):
        return "reference"
    if not d["n"]:
        return "-"
    if d["low"] is None:
        return f"{d['mean']:+.1f} (n=1)"
    return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{'*' if d['excludes_zero'] else ''}"


def markdown(cfg: Config, rows: list[dict], reference: Any, imagenet: bool) -> str:
    lines = [f"# Table 1: {cfg.data.root}, MobileNetV2 x{cfg.model.backbone.width_mult:g}, "
             f"{cfg.data.image_size[0]}x{cfg.data.image_size[1]}, {cfg.train.epochs} epochs", "",
             "Top-1 and top-5 x 100, mean ± std over seeds; the top-1 difference to "
             f"{pretty_label(reference)} paired by seed, mean [95% interval] (* excludes 0).", ""]
    head = "| activation | #Param | MAdds | top-1 | top-5 | top-1 difference |"
    rule = "|---|---|---|---|---|---|"
    if imagenet:
        head += " paper #Param | paper MAdds | paper top-1 | paper top-5 |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    for r in rows:
        line = (f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['madds'] / 1e6:.1f}M | "
                f"{_value(r, 'top1')} | {_value(r, 'top5')} | {_difference(r, reference)} |")
        if imagenet:
            p = r["paper"]
            line += (f" {p['params'] / 1e6:.1f}M | {p['madds'] / 1e6:.1f}M | {p['top1']:.1f} | "
                     f"{p['top5']:.1f} |" if p else " - | - | - | - |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["act", "status", "n", "params", "madds", "top1", "top1_std", "top5",
                     "top5_std", "dtop1", "dtop1_low", "dtop1_high", "paper_top1",
                     "paper_top5"])
    for r in rows:
        d = r["difference"]
        number = (lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                  else f"{v:.2f}")
        writer.writerow([json.dumps(r["act"]) if isinstance(r["act"], dict) else r["act"],
                         r["status"], r["n"], r["params"], r["madds"],
                         number(r["mean"] and r["mean"]["top1"]),
                         number(r["std"] and r["std"]["top1"]),
                         number(r["mean"] and r["mean"]["top5"]),
                         number(r["std"] and r["std"]["top5"]),
                         number(d["mean"]), number(d["low"]), number(d["high"]),
                         number(r["paper"] and r["paper"]["top1"]),
                         number(r["paper"] and r["paper"]["top5"])])
    return buffer.getvalue()


def bars_png(cfg: Config, rows: list[dict], path: Path) -> None:
    """Top-1 per activation (± std), the paper's beside it where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    ours = [r["mean"]["top1"] if r["mean"] else math.nan for r in rows]
    spread = [r["std"]["top1"] if r["std"] else 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2.5, 4.0))
    ax.bar(x - 0.2, ours, 0.4, yerr=spread, capsize=3, label="ours")
    paper = [r["paper"]["top1"] if r["paper"] else math.nan for r in rows]
    if is_imagenet_setting(cfg) and not all(math.isnan(v) for v in paper):
        ax.bar(x + 0.2, paper, 0.4, label="paper")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("top-1 x 100")
    finite = [v for v in ours + paper if not math.isnan(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5))
    ax.set_title(f"top-1, {cfg.data.root}, MobileNetV2 x{cfg.model.backbone.width_mult:g}",
                 fontsize=10)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)


def write_table1(cfg: Config, acts: Sequence[Any], cells, status: dict[str, str], out: Path,
                 reference: Any = "relu") -> dict:
    """table1.json (every seed's run under each row's ``runs``), .csv, .md and .png."""
    imagenet = is_imagenet_setting(cfg)
    rows = rows_of(cfg, acts, cells, status, reference)
    table = {"name": "table1", "imagenet_setting": imagenet, "acts": list(acts),
             "reference": reference, "cells": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "table1.json", table)
    atomic_write_text(out / "table1.csv", csv_text(rows))
    text = markdown(cfg, rows, reference, imagenet)
    atomic_write_text(out / "table1.md", text)
    bars_png(cfg, rows, out / "table1.png")
    print(text)
    return table
