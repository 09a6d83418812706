"""Grid tables: table2.md, table2.csv, table2.json and table2.png from the cells' metrics."""
from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

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
    """One row per run (cell and seed)."""
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
            except ValueError:  # an option a layer refuses; the cell's own log says which
                cost_cache[key] = {"params": None, "madds": None}
        # A run that failed now is failed, whatever metrics.json an earlier config left there.
        complete = (cell.is_complete(cfg.train.epochs, metrics)
                    and status.get(cell.name) != "failed")
        rows.append({
            "backbone": cell.backbone, "head": cell.head, "seed": cell.seed,
            "folder": str(cell.folder),
            "status": "finished" if complete else status.get(cell.name, "not run"),
            "stats": metrics.get("final") if complete else None,
            "params": cost_cache[key]["params"], "madds": cost_cache[key]["madds"],
            "train_time_s": metrics.get("train_time_s"),
            "log": str(cell.log_path),
        })
    return rows


def paired_difference(values: Sequence[float], reference: Sequence[float],
                      level: float = 0.95) -> dict:
    """Mean of per-seed differences and its Student-t interval (``low``/``high`` None for
    fewer than two pairs)."""
    differences = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n, "excludes_zero": False}
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
    return {"mean": mean, "low": low, "high": high, "n": n,
            "excludes_zero": bool(low > 0 or high < 0)}


def aggregate(runs: list[dict], reference: Sequence[Any]) -> list[dict]:
    """One row per cell: the mean and sample std of each stat over the finished seeds, every
    seed's stats, and the AP difference to ``reference`` paired by seed (x 100)."""
    cells: dict[str, list[dict]] = {}
    for run in runs:
        cells.setdefault(json.dumps([run["backbone"], run["head"]]), []).append(run)
    reference_ap = {r["seed"]: r["stats"]["AP"] for r in cells.get(json.dumps(list(reference)), [])
                    if r["stats"]}
    rows = []
    for seeds in cells.values():
        done = [r for r in seeds if r["stats"]]
        statuses = {r["status"] for r in seeds}
        status = "finished" if statuses == {"finished"} else \
            "failed" if "failed" in statuses else "not run"
        stats = {name: float(np.mean([r["stats"][name] for r in done])) for name in STAT_NAMES} \
            if done else None
        std = {name: float(np.std([r["stats"][name] for r in done], ddof=1))
               for name in STAT_NAMES} if len(done) > 1 else None
        paired = [r for r in done if r["seed"] in reference_ap]
        first = seeds[0]
        failed = [r for r in seeds if r["status"] == "failed"]
        rows.append({
            "backbone": first["backbone"], "head": first["head"],
            "folder": str(Path(first["folder"]).parent), "status": status,
            "n": len(done), "seeds": len(seeds), "stats": stats, "std": stats and std,
            "runs": [{k: r[k] for k in ("seed", "status", "stats", "train_time_s", "folder",
                                        "log")} for r in seeds],
            "difference": paired_difference([100 * r["stats"]["AP"] for r in paired],
                                            [100 * reference_ap[r["seed"]] for r in paired]),
            "params": first["params"], "madds": first["madds"],
            "train_time_s": (round(float(np.mean([r["train_time_s"] for r in done])), 1)
                             if done and all(r["train_time_s"] is not None for r in done)
                             else None),
            "log": (failed or seeds)[0]["log"],
            "paper_ap": _paper_value(first["backbone"], first["head"]),
        })
    return rows


def seed_noise(rows: list[dict], level: float = 0.95,
               half_widths: Sequence[float] = (2.0, 1.0)) -> Optional[dict]:
    """How much the seed moves a run's AP (x 100), pooled over the cells, and what that lets
    a paired difference resolve.

    ``pooled_std``: the cells' seed variances pooled by their degrees of freedom (every
    finished run counts). ``residual_std``: sigma of the additive model AP = cell + seed +
    noise over the seeds that every cell with a finished run finished (a randomised block
    design, (cells - 1)(seeds - 1) degrees of freedom), i.e. the spread left once what a
    seed does to every cell alike is removed, which is what a paired difference sees: its
    mean over n seeds has standard error sigma sqrt(2 / n). ``seeds_for_half_width`` gives,
    for each target half-width of that difference's interval, the least n that reaches it
    at this sigma. None when no cell has two finished seeds.
    """
    from scipy import stats

    runs = [{r["seed"]: 100 * r["stats"]["AP"] for r in row["runs"] if r["stats"]}
            for row in rows]
    spread = [np.asarray(list(aps.values())) for aps in runs if len(aps) > 1]
    if not spread:
        return None
    pooled_df = sum(len(a) - 1 for a in spread)
    pooled = math.sqrt(sum(((a - a.mean()) ** 2).sum() for a in spread) / pooled_df)
    cell_stds = [float(a.std(ddof=1)) for a in spread]
    noise = {"pooled_std": pooled, "pooled_df": pooled_df, "cells_with_spread": len(spread),
             "cell_std_min": min(cell_stds), "cell_std_max": max(cell_stds),
             "level": level, "residual_std": None}
    finished = [aps for aps in runs if aps]
    common = sorted(set.intersection(*(set(aps) for aps in finished)))
    if len(finished) < 2 or len(common) < 2:
        return noise
    ap = np.array([[aps[s] for s in common] for aps in finished])
    cells, seeds = ap.shape
    residual = ap - ap.mean(1, keepdims=True) - ap.mean(0, keepdims=True) + ap.mean()
    df = (cells - 1) * (seeds - 1)
    sigma = math.sqrt((residual ** 2).sum() / df)

    def half_width(n: int) -> float:
        return float(stats.t.ppf(0.5 + level / 2, (cells - 1) * (n - 1))
                     * sigma * math.sqrt(2 / n))

    needed = {}
    for target in half_widths:
        n = 2
        while half_width(n) > target and n < 10_000:
            n += 1
        needed[f"{target:g}"] = n if half_width(n) <= target else None
    noise.update(residual_std=sigma, residual_df=df, cells=cells, seeds=seeds,
                 paired_se=sigma * math.sqrt(2 / seeds), paired_half_width=half_width(seeds),
                 seeds_for_half_width=needed)
    return noise


def _noise_text(noise: Optional[dict]) -> list[str]:
    if noise is None:
        return []
    text = (f"Seed noise (AP x 100): the seed std pooled over {noise['cells_with_spread']} "
            f"cells is {noise['pooled_std']:.1f} ({noise['pooled_df']} degrees of freedom; "
            f"per cell {noise['cell_std_min']:.1f}-{noise['cell_std_max']:.1f}).")
    if noise["residual_std"] is not None:
        n = noise["seeds"]
        needed = " and ".join(f"± {h} takes " + (f"--seeds {k}" if k else "over 10000 seeds")
                              for h, k in noise["seeds_for_half_width"].items())
        text += (f" Removing what a seed does to every cell alike (a cell + seed model over "
                 f"the {n} seeds all {noise['cells']} cells finished, {noise['residual_df']} "
                 f"degrees of freedom) leaves sigma = {noise['residual_std']:.1f} per run. A "
                 f"paired difference of {n}-seed means then has standard error "
                 f"{noise['paired_se']:.1f}, and a {100 * noise['level']:.0f}% interval of "
                 f"± {noise['paired_half_width']:.1f} with this sigma. At this sigma, {needed}.")
    return ["", text]


def _ap_text(row: dict, with_paper: bool) -> str:
    if row["stats"] is None:
        return row["status"]
    ap = 100 * row["stats"]["AP"]
    text = f"{ap:.1f}"
    if row["std"] is not None:
        text += f" ± {100 * row['std']['AP']:.1f}"
    if row["seeds"] > 1:
        text += f" (n={row['n']})"
    if with_paper and row["paper_ap"] is not None:
        text += f"; paper {row['paper_ap']:.1f}, {ap - row['paper_ap']:+.1f}"
    return text


def _difference_text(row: dict, reference: Sequence[Any]) -> str:
    if [row["backbone"], row["head"]] == list(reference):
        return "reference"
    d = row["difference"]
    if not d["n"]:
        return "-"
    if d["low"] is None:
        return f"{d['mean']:+.1f} (n={d['n']}, no interval)"
    return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" + \
        (" *" if d["excludes_zero"] else "")


def markdown(cfg: Config, acts: Sequence[Any], rows: list[dict],
             reference: Sequence[Any] = ("relu", "relu")) -> str:
    paper = is_paper_setting(cfg)
    n = len(acts)
    grid = [rows[i * n:(i + 1) * n] for i in range(n)]
    heads = [pretty_label(a) for a in acts]
    seeds = max(r["seeds"] for r in rows)
    lines = ["# Table 2: COCO keypoint AP, backbone activation (rows) x head activation "
             "(columns)", "", setting_line(cfg), ""]
    what = "AP x 100" + (f", mean ± sample std over seeds (n finished of {seeds})"
                         if seeds > 1 else ", one seed")
    lines += [f"Each cell: {what}" + ("; the paper's AP and our difference to it" if paper
                                      else "") + ".", ""]
    lines.append("| backbone \\ head | " + " | ".join(heads) + " |")
    lines.append("|---" * (n + 1) + "|")
    for act, row in zip(acts, grid):
        lines.append(f"| {pretty_label(act)} | " + " | ".join(_ap_text(r, paper) for r in row)
                     + " |")
    ref = f"{pretty_label(reference[0])} / {pretty_label(reference[1])}"
    lines += ["", f"Paired differences to {ref} (AP x 100): the mean over seeds of (cell - "
              f"reference) with the same seed, and its 95% Student-t interval; * marks an "
              f"interval that excludes zero.", "",
              "| backbone \\ head | " + " | ".join(heads) + " |", "|---" * (n + 1) + "|"]
    for act, row in zip(acts, grid):
        lines.append(f"| {pretty_label(act)} | " + " | ".join(
            _difference_text(r, reference) for r in row) + " |")
    lines += _noise_text(seed_noise(rows))
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
    """One line per cell: the mean of each stat over seeds, AP's std, n, the paired AP
    difference (x 100) and its interval."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["backbone", "head", "status", "n", *STAT_NAMES, "AP_std",
                     "dAP", "dAP_low", "dAP_high", "params", "madds", "train_time_s",
                     "paper_AP", "folder"])
    for r in rows:
        stats = [f"{r['stats'][s]:.4f}" if r["stats"] else "" for s in STAT_NAMES]
        d = r["difference"]
        spread = [f"{r['std']['AP']:.4f}" if r["std"] else ""] + [
            "" if d[k] is None or (isinstance(d[k], float) and math.isnan(d[k]))
            else f"{d[k]:.2f}" for k in ("mean", "low", "high")]
        writer.writerow([_csv_value(r[key]) for key in ("backbone", "head", "status", "n")]
                        + stats + spread
                        + [_csv_value(r[key]) for key in ("params", "madds", "train_time_s",
                                                           "paper_ap", "folder")])
    return buffer.getvalue()


def _panel(ax, values, labels, text, cmap, norm=None, colour_label=""):
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm)
    n = len(labels)
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("head activation")
    ax.set_ylabel("backbone activation")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=9,
                    color="black" if np.isfinite(values[i, j]) else "grey")
    ax.figure.colorbar(image, ax=ax, label=colour_label, shrink=0.8)


def heatmap_png(cfg: Config, acts: Sequence[Any], rows: list[dict], path: Path,
                reference: Sequence[Any] = ("relu", "relu")) -> None:
    """Left: mean AP (± std) per cell; right: the paired difference to the reference, * where
    its interval excludes zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    n = len(acts)
    labels = [pretty_label(a) for a in acts]
    ap = np.array([100 * r["stats"]["AP"] if r["stats"] else math.nan
                   for r in rows]).reshape(n, n)
    ap_text = [[(f"{ap[i, j]:.1f}" + (f"\n± {100 * rows[i * n + j]['std']['AP']:.1f}"
                                      if rows[i * n + j]["std"] else ""))
                if np.isfinite(ap[i, j]) else rows[i * n + j]["status"] for j in range(n)]
               for i in range(n)]
    diff = np.array([r["difference"]["mean"] if r["difference"]["n"] else math.nan
                     for r in rows]).reshape(n, n)
    diff_text = [[_difference_text(rows[i * n + j], reference).replace(" [", "\n[")
                  .replace(" (", "\n(") for j in range(n)] for i in range(n)]
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.7 * n + 2.5), 1.4 * n + 2.0))
    _panel(axes[0], ap, labels, ap_text, "viridis", colour_label="AP x 100")
    finite = diff[np.isfinite(diff)]
    bound = max(float(np.abs(finite).max()), 1e-6) if finite.size else 1.0
    _panel(axes[1], diff, labels, diff_text, "RdBu",
           TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), "difference, AP x 100")
    data = "synthetic" if "synthetic" in cfg.data.root else "COCO"
    seeds = max(r["seeds"] for r in rows)
    axes[0].set_title(f"AP, {data}, {cfg.data.input_size[0]}x{cfg.data.input_size[1]}, "
                      f"{cfg.train.epochs} epochs, {seeds} seed(s)", fontsize=10)
    axes[1].set_title(f"paired difference to {pretty_label(reference[0])} / "
                      f"{pretty_label(reference[1])}, 95% CI (* excludes 0)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)


def write_tables(cfg: Config, acts: Sequence[Any], cells, status: dict[str, str],
                 out: Path, reference: Sequence[Any] = ("relu", "relu")) -> dict:
    """table2.json (every seed's 10 stats under each cell's ``runs``), .csv, .md and .png."""
    rows = aggregate(collect(cfg, cells, status), reference)
    table = {"name": "table2", "setting": setting_line(cfg),
             "paper_setting": is_paper_setting(cfg),
             "acts": list(acts), "reference": list(reference), "noise": seed_noise(rows),
             "cells": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "table2.json", table)
    atomic_write_text(out / "table2.csv", csv_text(rows))
    text = markdown(cfg, acts, rows, reference)
    atomic_write_text(out / "table2.md", text)
    heatmap_png(cfg, acts, rows, out / "table2.png", reference)
    print(text)
    return table
