"""Results table (markdown + JSON) and plots of the study."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure

# (column title, task, score key, higher is better)
METRICS = [
    ("ASR WER", "ASR", "wer", False),
    ("ST BLEU", "ST", "bleu", True),
    ("ST chrF", "ST", "chrf", True),
    ("SQA F1", "SQA", "f1", True),
    ("SQA EM", "SQA", "exact_match", True),
]


def _scores(eval_dir: Path, task: str) -> dict:
    files = sorted((eval_dir / task).glob("*_scores.json"))
    if len(files) != 1:
        raise FileNotFoundError(f"{eval_dir / task}: expected one *_scores.json, found {len(files)}")
    return json.loads(files[0].read_text())


def _alignment(diag_dir: Path) -> dict[int, dict]:
    layers = json.loads((diag_dir / "DONE.json").read_text())["layers"]
    return {int(k): v for k, v in layers.items()}


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "trainer_state.json"
    return json.loads(path.read_text())["log_history"] if path.is_file() else []


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def collect(runs: dict[int, dict[str, dict[str, Path]]]) -> dict[str, dict[str, list[float]]]:
    """variant -> metric -> one value per seed."""
    table: dict[str, dict[str, list[float]]] = {}
    for seed_runs in runs.values():
        for variant, dirs in seed_runs.items():
            row = table.setdefault(variant, {})
            for title, task, key, _ in METRICS:
                row.setdefault(title, []).append(float(_scores(dirs["eval"], task)[key]))
            align = _alignment(dirs["alignment"])
            first, last = min(align), max(align)
            row.setdefault("R@1 L0", []).append(100 * align[first]["r1_speech2text"])
            row.setdefault(f"R@1 L{last}", []).append(100 * align[last]["r1_speech2text"])
    return table


def markdown_table(table: dict[str, dict[str, list[float]]], seeds: int) -> str:
    columns = list(next(iter(table.values())))
    arrows = {title: ("↑" if up else "↓") for title, _, _, up in METRICS}
    head = "| pretraining | " + " | ".join(f"{c} {arrows.get(c, '↑')}" for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for variant, row in table.items():
        lines.append(f"| {variant} | " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    note = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    lines.append(
        f"\nAll scores in percent ({note}). R@1: speech→text retrieval among the test utterances by "
        "mean-pooled LLM states of the stage-1 projector, at the embedding layer (L0) and the last layer."
    )
    return "\n".join(lines)


def plot_curves(runs, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    seed_runs = runs[min(runs)]
    for ax, stage in zip(axes, ("pretrain", "finetune")):
        for variant, dirs in seed_runs.items():
            hist = [h for h in _history(dirs[stage]) if "loss" in h]
            if hist:
                ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=variant)
        ax.set_title(f"stage {1 if stage == 'pretrain' else 2}: training loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_retrieval(runs, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for variant in runs[min(runs)]:
        per_seed = [_alignment(seed_runs[variant]["alignment"]) for seed_runs in runs.values()]
        layers = sorted(per_seed[0])
        r1 = [statistics.mean(100 * a[layer]["r1_speech2text"] for a in per_seed) for layer in layers]
        ax.plot(layers, r1, marker="o", label=variant)
    ax.set_xlabel("LLM layer (0 = embeddings)")
    ax.set_ylabel("speech→text R@1 (%)")
    ax.set_title("alignment after stage 1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_downstream(table, path: Path) -> None:
    titles = [t for t, _, _, _ in METRICS]
    fig = Figure(figsize=(3.2 * len(titles), 3.6))
    axes = fig.subplots(1, len(titles))
    variants = list(table)
    for ax, title in zip(axes, titles):
        means = [statistics.mean(table[v][title]) for v in variants]
        errs = [statistics.stdev(table[v][title]) if len(table[v][title]) > 1 else 0 for v in variants]
        ax.bar(range(len(variants)), means, yerr=errs, color=[f"C{i}" for i in range(len(variants))])
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(out: Path, runs, base: Path, timings: dict[str, float]) -> dict:
    table = collect(runs)
    base_report = json.loads((base / "DONE.json").read_text())
    md = markdown_table(table, len(runs))
    phase_totals: dict[str, float] = {}
    for name, seconds in timings.items():
        key = name.split("/")[1] if name.startswith("seed") else name
        phase_totals[key] = phase_totals.get(key, 0.0) + seconds
    md += "\n\nWall time per phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phase_totals.items())
    (out / "results.md").write_text(md + "\n")
    payload = {"table": table, "base_models": base_report, "timings": timings, "phase_totals": phase_totals}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_curves(runs, out / "training_curves.png")
    plot_retrieval(runs, out / "retrieval_per_layer.png")
    plot_downstream(table, out / "downstream.png")
    return payload
