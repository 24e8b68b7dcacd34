"""The study's markdown tables: cells as mean ± 95 % t-interval (a diverged seed named in its cell),
the main table, R@1 per layer, the stage-2 learning curve and every seed's own values."""

from __future__ import annotations

import math

from llava.demo.evaluation import METRICS
from llava.demo.stats import mean_ci

TASKS = ("ASR", "ST", "SQA")
PRIMARY = "dev NLL (mean)"  # the metric that picks the best variant and leads the significance section
SEED_COLUMNS = ("ASR WER", "ST BLEU", "SQA F1", PRIMARY)  # the per-seed table's measures


def variant_labels() -> dict[str, str]:
    """Each variant's display name in tables and plots."""
    from llava.demo.variants import VARIANTS

    return {k: v.label for k, v in VARIANTS.items()}


def _head(cells: list[str]) -> list[str]:
    """A markdown table's header row and separator."""
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def _row(label: str, cells: list[str]) -> str:
    """One markdown table row: the label, then the cells."""
    return f"| {label} | " + " | ".join(cells) + " |"


def _seed_value(values: dict[int, float], seed: int, digits: int) -> str:
    if seed not in values:
        return ""
    return f"{values[seed]:.{digits}f}" if math.isfinite(values[seed]) else "diverged"


def ci_cell(values: dict[int, float], digits: int = 1) -> str:
    """Mean ± 95 % t-interval over the seeds' values (diverged seeds named)."""
    return mean_ci(list(values.values())).format(digits)


def main_table(data: dict[str, dict], n_seeds: int) -> str:
    labels = variant_labels()
    up = {title: higher for title, _, _, higher in METRICS}
    columns = ["ASR WER", "ST BLEU", "SQA F1", *(f"dev NLL {t}" for t in TASKS), PRIMARY]
    tuned = [k for k, row in data.items() if row["metrics"]]
    layers = sorted({layer for row in data.values() for layer in row["r1"]})
    r1_cols = [layers[0], layers[-1]] if layers else []
    head = ["pretraining"] + [f"{c} {'↑' if up.get(c, False) else '↓'}" for c in columns]
    head += [f"R@1 L{k} ↑" for k in r1_cols]
    lines = _head(head)
    for key in tuned:
        row = data[key]
        cells = [ci_cell(row["metrics"].get(c, {}), 3 if "NLL" in c else 1) for c in columns]
        cells += [ci_cell(row["r1"].get(k, {})) for k in r1_cols]
        lines.append(_row(labels[key], cells))
    lines.append(
        f"\nMean ± 95 % t-interval over {n_seeds} seed(s); a diverged seed stays in the count and is "
        "named in its cell. WER (the paper's: mean of per-utterance WERs after its normalisation), "
        "sacreBLEU and SQuAD F1 in percent on the test sets; dev NLL = teacher-forced negative "
        "log-likelihood per target token (nats) after stage 2; R@1 = speech→text retrieval of the stage-1 "
        "projector at the embedding layer (L0) and the last layer."
    )
    return "\n".join(lines)


def layer_table(data: dict[str, dict]) -> str:
    labels = variant_labels()
    layers = sorted({layer for row in data.values() for layer in row["r1"]})
    lines = _head(["stage 1", *(f"L{k}" for k in layers)])
    for key, row in data.items():
        lines.append(_row(labels[key], [ci_cell(row["r1"].get(k, {})) for k in layers]))
    return "\n".join(lines)


def curve_table(data: dict[str, dict]) -> str:
    labels = variant_labels()
    steps = sorted({s for row in data.values() for s in row["curve"]})
    lines = _head(["variant", *(f"step {s}" for s in steps)])
    for key, row in data.items():
        if row["curve"]:
            lines.append(
                _row(labels[key], [ci_cell(row["curve"].get(s, {}).get(PRIMARY, {}), 3) for s in steps])
            )
    return "\n".join(lines)


def seed_table(data: dict[str, dict]) -> str:
    """Every seed's own value of the headline measures (`diverged` where training did not finish), so a
    mean can be traced to the runs behind it."""
    labels = variant_labels()
    tuned = [k for k, row in data.items() if row["metrics"]]
    seeds = sorted({s for k in tuned for c in SEED_COLUMNS for s in data[k]["metrics"].get(c, {})})
    if not seeds:
        return ""
    lines = _head(["pretraining", "measure", *(f"seed {s}" for s in seeds)])
    for key in tuned:
        for column in SEED_COLUMNS:
            values = data[key]["metrics"].get(column, {})
            if not values:
                continue
            digits = 3 if "NLL" in column else 1
            lines.append(_row(labels[key], [column, *(_seed_value(values, s, digits) for s in seeds)]))
    return "\n".join(lines)
