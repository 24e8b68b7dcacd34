"""The study's plots, one per question it answers (every point is a mean with its 95 % t-interval):

- `pretraining_at_10pct.png`: does contrastive pretraining beat ASR pretraining and no pretraining
  with 10 % of the task data? (dev NLL per task and test metrics per variant)
- `learning_curves.png`: dev NLL along stage 2 per variant (pretraining helps most early)
- `alignment_layers.png`: where along the LLM's layers does speech->text alignment rise?
- `pos_shift.png`: does a position shift during contrastive pretraining change anything?
- `training_curves.png`: the training losses of both stages (first seed), for inspection
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from llava.demo.evaluation import METRICS
from llava.demo.stats import mean_ci

TASKS = ("ASR", "ST", "SQA")
PRIMARY = "dev NLL (mean)"


def _ci(values: dict) -> tuple[float, float]:
    s = mean_ci(list(values.values()))
    return s.mean, (0.0 if math.isnan(s.half_width) else s.half_width)


def plot_at_10pct(data: dict, labels: dict, path: Path) -> None:
    columns = [
        *(f"dev NLL {t}" for t in TASKS),
        *(t for t, *_ in METRICS if t in ("ASR WER", "ST BLEU", "SQA F1")),
    ]
    keys = [k for k, row in data.items() if row["metrics"]]
    fig = Figure(figsize=(2.6 * len(columns), 3.8))
    axes = fig.subplots(1, len(columns))
    for ax, column in zip(axes, columns):
        stats = [_ci(data[k]["metrics"].get(column, {})) for k in keys]
        if "NLL" in column:
            # Points, not bars: the differences are small against the absolute level, and a bar
            # whose axis does not start at zero misleads. The axis spans every interval.
            for i, (m, h) in enumerate(stats):
                ax.errorbar(i, m, yerr=h, fmt="o", capsize=3, color=f"C{i}")
            ends = [v for m, h in stats if math.isfinite(m) for v in (m - h, m + h)]
            if ends:
                pad = 0.08 * (max(ends) - min(ends) or 0.1)
                ax.set_ylim(min(ends) - pad, max(ends) + pad)
        else:
            ax.bar(range(len(keys)), [m for m, _ in stats], yerr=[h for _, h in stats], capsize=3,
                   color=[f"C{i}" for i in range(len(keys))])  # fmt: skip
        ax.set_xticks(range(len(keys)), [labels[k] for k in keys], rotation=65, ha="right", fontsize=7)
        ax.set_title(column + (" ↓" if "NLL" in column or "WER" in column else " ↑"), fontsize=9)
    fig.suptitle("Pretraining variants after stage 2 on 10 % of the task data (mean ± 95 % CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_learning_curves(data: dict, labels: dict, path: Path) -> None:
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 4)
    for ax, column in zip(axes, [PRIMARY, *(f"dev NLL {t}" for t in TASKS)]):
        for i, (key, row) in enumerate(data.items()):
            if not row["curve"]:
                continue
            steps = sorted(row["curve"])
            stats = [_ci(row["curve"][s].get(column, {})) for s in steps]
            means = [m for m, _ in stats]
            ax.plot(steps, means, marker="o", ms=3, color=f"C{i}", label=labels[key])
            ax.fill_between(
                steps, [m - h for m, h in stats], [m + h for m, h in stats], color=f"C{i}", alpha=0.15
            )
        ax.set_xlabel("stage-2 step")
        ax.set_title(column, fontsize=9)
    axes[0].set_ylabel("nats / target token")
    axes[0].legend(fontsize=6)
    fig.suptitle("Stage-2 learning curves (10 % data; mean ± 95 % CI over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_layers(ax, data: dict, labels: dict, keys: list[str]) -> None:
    for key in keys:
        row = data[key]
        layers = sorted(row["r1"])
        if not layers:
            continue
        stats = [_ci(row["r1"][k]) for k in layers]
        ax.errorbar(layers, [m for m, _ in stats], yerr=[h for _, h in stats], marker="o", ms=3, capsize=2,
                    label=labels[key])  # fmt: skip
    ax.set_xlabel("LLM layer (0 = input embeddings)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("speech→text R@1 (%)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _on_seeds(row: dict, seeds: set) -> dict:
    """A variant's per-layer R@1 and stage-1 losses restricted to `seeds`."""
    return {
        **row,
        "r1": {k: {s: v for s, v in by_seed.items() if s in seeds} for k, by_seed in row["r1"].items()},
        "stage1": {s: v for s, v in row["stage1"].items() if s in seeds},
    }


def plot_alignment_layers(data: dict, labels: dict, path: Path) -> None:
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    _plot_layers(ax, data, labels, [k for k in data if k != "pos-shift"])
    ax.set_title("Alignment along the layers after stage 1 (mean ± 95 % CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_pos_shift(data: dict, labels: dict, runs: dict, path: Path) -> bool:
    """R@1 per layer and the final per-layer stage-1 loss, with and without the shift."""
    pair = [k for k in ("contr-cos-all-fixed", "pos-shift") if k in data]
    if len(pair) < 2:
        return False
    # A paired comparison: both on the seeds the shifted variant ran (it may run on fewer).
    seeds = set(data[pair[0]]["stage1"]) & set(data[pair[1]]["stage1"])
    data = {key: _on_seeds(data[key], seeds) for key in pair}
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    _plot_layers(left, data, labels, pair)
    left.set_title("R@1 per layer after stage 1", fontsize=9)
    for i, key in enumerate(pair):
        terms = sorted({t for v in data[key]["stage1"].values() for t in v if t.startswith("contrastive_layer_")},
                       key=lambda t: int(t.rsplit("_", 1)[1]))  # fmt: skip
        layers = [int(t.rsplit("_", 1)[1]) for t in terms]
        stats = [_ci({s: v.get(t, math.nan) for s, v in data[key]["stage1"].items()}) for t in terms]
        right.errorbar(layers, [m for m, _ in stats], yerr=[h for _, h in stats], marker="o", ms=3, capsize=2,
                       color=f"C{i}", label=labels[key])  # fmt: skip
    right.set_xlabel("LLM layer")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_ylabel("final stage-1 InfoNCE loss")
    right.set_title("Final stage-1 loss per layer", fontsize=9)
    right.legend(fontsize=6)
    gaps = [
        abs(v - data[pair[1]]["stage1"].get(s, {}).get(t, math.nan))
        for s, terms in data[pair[0]]["stage1"].items()
        for t, v in terms.items()
        if t.startswith("contrastive_layer_")
    ]
    gap = max((g for g in gaps if math.isfinite(g)), default=math.nan)
    fig.suptitle(
        "Position shift (random offset of both passes' position ids) vs none: "
        f"largest per-seed loss difference {gap:.1g} nats",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "trainer_state.json"
    return json.loads(path.read_text())["log_history"] if path.is_file() else []


def plot_training(runs: dict, labels: dict, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    seed_runs = runs[min(runs)]
    for ax, stage in zip(axes, ("pretrain", "finetune")):
        for key, dirs in seed_runs.items():
            hist = [h for h in _history(dirs[stage]) if "loss" in h] if stage in dirs else []
            if hist:
                ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=labels[key])
        ax.set_title(f"stage {1 if stage == 'pretrain' else 2}: training loss (seed {min(runs)})", fontsize=9)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_plots(out: Path, data: dict, runs: dict, labels: dict) -> list[str]:
    """Write every plot the data allows; returns the file names written."""
    written = []
    if any(row["metrics"] for row in data.values()):
        plot_at_10pct(data, labels, out / "pretraining_at_10pct.png")
        plot_learning_curves(data, labels, out / "learning_curves.png")
        written += ["pretraining_at_10pct.png", "learning_curves.png"]
    plot_alignment_layers(data, labels, out / "alignment_layers.png")
    written.append("alignment_layers.png")
    if plot_pos_shift(data, labels, runs, out / "pos_shift.png"):
        written.append("pos_shift.png")
    plot_training(runs, labels, out / "training_curves.png")
    written.append("training_curves.png")
    return written
