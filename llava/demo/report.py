"""Results of the study: per-seed values collected from the phase directories, cells as mean ± 95 %
t-interval, pairwise tests between variants, the full-data share, wall times; markdown + JSON + plots.

A (seed, variant) whose training diverged keeps its place: its values are NaN, and each cell says how
many seeds diverged.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

from llava.demo.evaluation import METRICS
from llava.demo.phases import Tracker, diverged, phase_info
from llava.demo.stats import compare, holm, mean_ci
from llava.demo.tables import (
    PRIMARY,
    TASKS,
    ci_cell,
    curve_table,
    layer_table,
    main_table,
    seed_table,
    variant_labels,
)

NAN = math.nan


def _mean_nll(point: dict) -> float:
    vals = [point[t]["nll"] for t in TASKS if t in point]
    return sum(vals) / len(vals) if vals and all(math.isfinite(v) for v in vals) else NAN


# ------------------------------------------------------------------------------------- collection
def collect(runs: dict[int, dict[str, dict[str, Path]]]) -> dict[str, dict]:
    """variant -> {"metrics": {column: {seed: value}}, "curve": {step: {column: {seed: value}}},
    "r1": {layer: {seed: value}}, "stage1": {seed: {term: value}}, "diverged": {seed: phase}}."""
    data: dict[str, dict] = {}
    for seed, seed_runs in runs.items():
        for key, dirs in seed_runs.items():
            row = data.setdefault(key, {"metrics": {}, "curve": {}, "r1": {}, "stage1": {}, "diverged": {}})
            for phase, path in dirs.items():
                if diverged(path):
                    row["diverged"][seed] = phase
            pre = phase_info(dirs["pretrain"])
            row["stage1"][seed] = {"loss": pre.get("final_loss", NAN), **pre.get("final_terms", {})}
            balance = _balance(dirs["pretrain"])
            if balance:
                row.setdefault("balance", {})[seed] = balance
            if "alignment" in dirs:
                for layer, m in phase_info(dirs["alignment"]).get("layers", {}).items():
                    row["r1"].setdefault(int(layer), {})[seed] = 100 * m["r1_speech2text"]
            from llava.demo.variants import VARIANTS

            if not VARIANTS[key].finetune:
                continue
            ev = phase_info(dirs["eval"]) if "eval" in dirs else {}
            for title, *_ in METRICS:
                value = ev.get("metrics", {}).get(title)
                row["metrics"].setdefault(title, {})[seed] = NAN if value is None else value
            curve = ev.get("curve", {})
            steps = sorted(int(s) for s in curve) or [0]
            for step in steps:
                point = curve.get(str(step), {})
                cells = row["curve"].setdefault(step, {})
                for t in TASKS:
                    cells.setdefault(f"dev NLL {t}", {})[seed] = point.get(t, {}).get("nll", NAN)
                cells.setdefault(PRIMARY, {})[seed] = _mean_nll(point) if point else NAN
            final = row["curve"][max(row["curve"])]
            for column, values in final.items():
                row["metrics"].setdefault(column, {})[seed] = values.get(seed, NAN)
    return data


def _balance(run_dir: Path) -> dict:
    """Per-layer contrastive loss and gradient norm at the projector, at the first and the last logged
    step of a stage-1 run that logged term gradient norms: {"first"|"last": {layer: {...}}, "steps"}."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return {}
    logs = [h for h in json.loads(path.read_text()).get("log_history", []) if any(k.startswith("grad_norm_contrastive_layer_") for k in h)]  # fmt: skip
    if not logs:
        return {}

    def point(h: dict) -> dict:
        layers = sorted(int(k.rsplit("_", 1)[1]) for k in h if k.startswith("grad_norm_contrastive_layer_"))
        return {
            k: {
                "loss": h.get(f"contrastive_layer_{k}", NAN),
                "grad_norm": h[f"grad_norm_contrastive_layer_{k}"],
            }
            for k in layers
        }

    return {"first": point(logs[0]), "last": point(logs[-1]), "steps": [logs[0]["step"], logs[-1]["step"]]}


def balance_table(data: dict[str, dict]) -> str:
    """contr-cos-all as the paper runs it vs fixed: per layer, loss and gradient norm (share of the
    summed per-term norms) at the projector at the first and the last logged stage-1 step."""
    labels = variant_labels()
    keys = [k for k, row in data.items() if row.get("balance")]
    if not keys:
        return ""
    lines = []
    for key in keys:
        per_seed = data[key]["balance"]
        steps = next(iter(per_seed.values()))["steps"]
        layers = sorted(next(iter(per_seed.values()))["first"])
        lines += [
            f"\n**{labels[key]}** (mean over {len(per_seed)} seed(s); steps {steps[0]} and {steps[1]})\n",
            "| layer | loss first | loss last | grad norm first | share first | grad norm last | share last |",
            "|---|---|---|---|---|---|---|",
        ]
        cells: dict[str, dict[int, list[float]]] = {}
        for seed_balance in per_seed.values():
            for when in ("first", "last"):
                total = sum(v["grad_norm"] for v in seed_balance[when].values()) or 1.0
                for k, v in seed_balance[when].items():
                    cells.setdefault(f"loss {when}", {}).setdefault(k, []).append(v["loss"])
                    cells.setdefault(f"grad {when}", {}).setdefault(k, []).append(v["grad_norm"])
                    cells.setdefault(f"share {when}", {}).setdefault(k, []).append(v["grad_norm"] / total)

        for k in layers:
            lines.append(
                f"| {k} | {_avg(cells, 'loss first', k, '.3f')} | {_avg(cells, 'loss last', k, '.3f')} "
                f"| {_avg(cells, 'grad first', k, '.3g')} | {_avg(cells, 'share first', k, '.2f')} "
                f"| {_avg(cells, 'grad last', k, '.3g')} | {_avg(cells, 'share last', k, '.2f')} |"
            )
    return "\n".join(lines)


def _avg(cells: dict[str, dict[int, list[float]]], name: str, k: int, fmt: str) -> str:
    vals = [v for v in cells.get(name, {}).get(k, []) if math.isfinite(v)]
    return format(sum(vals) / len(vals), fmt) if vals else "n/a"


def best_variant(runs: dict[int, dict[str, dict[str, Path]]]) -> str | None:
    """The pretrained variant (not "none") with the lowest mean final dev NLL over seeds."""
    data = collect(runs)
    scored = {
        k: mean_ci(list(row["metrics"].get(PRIMARY, {}).values())).mean
        for k, row in data.items()
        if k != "none" and PRIMARY in row["metrics"]
    }
    scored = {k: v for k, v in scored.items() if math.isfinite(v)}
    return min(scored, key=scored.get) if scored else None


def _pair_line(labels: dict, a: str, b: str, r, p_adj: float, digits: int) -> tuple[str, bool]:
    sig = (not math.isnan(p_adj)) and p_adj < 0.05
    diff = "n/a" if math.isnan(r.diff) else f"{r.diff:+.{digits}f}"
    if not math.isnan(r.half_width):
        diff += f" ± {r.half_width:.{digits}f}"
    p_txt = "n/a" if math.isnan(r.p) else f"{r.p:.3g}"
    p_adj_txt = "n/a" if math.isnan(p_adj) else f"{p_adj:.3g}"
    verdict = "n/a (too few seeds)" if r.test == "none" else ("**yes**" if sig else "no")
    return f"| {labels[a]} | {labels[b]} | {diff} | {p_txt} | {p_adj_txt} | {verdict} |", sig


def _test(data: dict[str, dict], column: str, pair: tuple[str, str]):
    a, b = pair
    return compare(data[a]["metrics"].get(column, {}), data[b]["metrics"].get(column, {}))


def significance(data: dict[str, dict], columns: list[str]) -> tuple[str, str, list[dict]]:
    """Pairs of fine-tuned variants on each column: paired-by-seed t-tests.

    Two families, each Holm-adjusted on its own: the planned comparisons (`PLANNED_PAIRS`: the
    questions the study asks) and, exploratory, every pair. Returns (summary markdown, full markdown,
    records): the summary has the planned pairs of the first column, the significant planned pairs of
    the others and any pair significant in the all-pairs family; the full one every pair."""
    from llava.demo.variants import PLANNED_PAIRS

    labels = variant_labels()
    tuned = [k for k, row in data.items() if row["metrics"]]
    pairs = [(a, b) for i, a in enumerate(tuned) for b in tuned[i + 1 :]]
    planned = [(a, b) for a, b in PLANNED_PAIRS if a in tuned and b in tuned]
    records: list[dict] = []
    head = ["| A | B | A − B (95 % CI) | p | p (Holm) | significant at 0.05 |", "|---|---|---|---|---|---|"]
    summary: list[str] = []
    full: list[str] = []
    for n, column in enumerate(columns):
        digits = 3 if "NLL" in column else 1

        # A planned pair is tested in its own order (A − B), which the all-pairs list may reverse.
        tests = {pair: _test(data, column, pair) for pair in dict.fromkeys([*pairs, *planned])}
        rows, exploratory = _family(labels, column, "all", pairs, tests, digits, records)
        p_rows, p_sig = _family(labels, column, "planned", planned, tests, digits, records)
        title = f"\n**{column}** (A − B; t-test paired by seed; Holm over the {len(planned)} planned pairs)\n"
        full += [
            f"\n**{column}** (A − B; t-test paired by seed; Holm over all {len(pairs)} pairs)\n",
            *head,
            *rows,
        ]
        if n == 0:
            summary += [title, *head, *p_rows]
        elif p_sig:
            summary += [title, *head, *p_sig]
        else:
            summary.append(f"\n**{column}**: no planned pair differs significantly.")
        if exploratory:
            summary += [
                f"\nExploratory, significant over all {len(pairs)} pairs of {column}:\n",
                *head,
                *exploratory,
            ]
    return "\n".join(summary), "\n".join(full), records


def _family(
    labels: dict, column: str, family: str, pairs: list, tests: dict, digits: int, records: list[dict]
) -> tuple[list[str], list[str]]:
    """Holm-adjust one family of pair tests; its table rows and significant rows, and append its records."""
    adjusted = holm([tests[pair].p for pair in pairs])
    rows, significant = [], []
    for (a, b), p_adj in zip(pairs, adjusted):
        r = tests[(a, b)]
        line, sig = _pair_line(labels, a, b, r, p_adj, digits)
        rows.append(line)
        if sig:
            significant.append(line)
        records.append({"column": column, "family": family, "a": a, "b": b, "test": r.test, "diff": r.diff, "ci": r.half_width, "p": r.p, "p_holm": p_adj, "n": r.n, "significant": sig})  # fmt: skip
    return rows, significant


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root` when it lies inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def full_data_share(data: dict[str, dict], full: dict | None) -> dict | None:
    """For the best variant: share of the full-data dev-NLL gain (over its stage-1 start) kept at 10 %,
    and the 10 % / 100 % ratio of each test metric, from the seed the 100 % run used."""
    if not full or "eval" not in full:
        return None
    key = full["variant"]
    info = phase_info(full["eval"])
    train_full = phase_info(full["finetune"]).get("train_samples") if "finetune" in full else None
    full_curve = info.get("curve", {})
    row = data[key]
    seed = min(s for s in row["metrics"].get(PRIMARY, {}))
    start = row["curve"][0][PRIMARY][seed]
    at10 = row["metrics"][PRIMARY][seed]
    at100 = _mean_nll(full_curve[str(max(int(s) for s in full_curve))])
    # Only a real full-data gain has a share; otherwise the number would be noise over noise.
    share = (start - at10) / (start - at100) if start - at100 > 0 else NAN
    ratios = {}
    for title, *_ in METRICS:
        v10, v100 = row["metrics"].get(title, {}).get(seed, NAN), info.get("metrics", {}).get(title)
        if v100 is not None and math.isfinite(v10):
            ratios[title] = {"10%": v10, "100%": v100}
    return {"variant": key, "seed": seed, "nll_start": start, "nll_10": at10, "nll_100": at100, "share": share, "metrics": ratios, "train_samples_100": train_full}  # fmt: skip


def stage1_terms(data: dict[str, dict]) -> str:
    """Final stage-1 loss terms per layer, for the contrastive variants (per-layer learning)."""
    labels = variant_labels()
    lines = []
    for key, row in data.items():
        terms = sorted(
            {t for v in row["stage1"].values() for t in v if t.startswith("contrastive_layer_")},
            key=lambda t: int(t.rsplit("_", 1)[1]),
        )
        if terms:
            cells = " ".join(f"L{t.rsplit('_', 1)[1]} {ci_cell({s: v.get(t, NAN) for s, v in row['stage1'].items()}, 2)}" for t in terms)  # fmt: skip
            lines.append(f"- {labels[key]}: {cells}")
    return "\n".join(lines)


def pos_shift_summary(data: dict[str, dict]) -> dict | None:
    """Largest seed-wise differences between contr-cos-all (fixed) with and without the position shift:
    final stage-1 loss per layer and R@1 per layer (with rotary positions a constant offset should
    change nothing but rounding)."""
    if "pos-shift" not in data or "contr-cos-all-fixed" not in data:
        return None
    a, b = data["contr-cos-all-fixed"], data["pos-shift"]
    seeds = sorted(set(a["stage1"]) & set(b["stage1"]))
    loss_diffs = [
        abs(a["stage1"][s][t] - b["stage1"][s][t])
        for s in seeds
        for t in a["stage1"][s]
        if t.startswith("contrastive_layer_") and t in b["stage1"][s]
    ]
    r1_diffs = [abs(a["r1"][k][s] - b["r1"][k][s]) for k in a["r1"] if k in b["r1"] for s in seeds if s in a["r1"][k] and s in b["r1"][k]]  # fmt: skip
    finite = [d for d in loss_diffs if math.isfinite(d)]
    return {
        "seeds": len(seeds),
        "max_loss_diff": max(finite) if finite else NAN,
        "max_r1_diff": max(r1_diffs) if r1_diffs else NAN,
        "r1_cells": len(r1_diffs),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    return f"{cpu}, {os.cpu_count()} cores visible, OMP_NUM_THREADS={threads}, Python {platform.python_version()}"


def phase_totals(tracker: Tracker) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, seconds in tracker.timings.items():
        kind = tracker.kinds.get(name, name)
        totals[kind] = totals.get(kind, 0.0) + seconds
    return totals


def cpu_totals(out: Path) -> dict[str, float]:
    """CPU seconds per phase kind, from the DONE.json files under a study directory."""
    totals: dict[str, float] = {}
    for pattern, kind_at in (("seed*/*/*/DONE.json", 1), ("full_data/*/*/DONE.json", 2)):
        for marker in out.glob(pattern):
            parts = marker.parent.relative_to(out).parts
            cpu = json.loads(marker.read_text()).get("cpu_seconds")
            if cpu is not None:
                totals[parts[kind_at]] = totals.get(parts[kind_at], 0.0) + cpu
    return totals


def write_report(out: Path, runs, full, base: Path, tracker: Tracker, budget) -> dict:
    from llava.demo.plots import write_plots

    data = collect(runs)
    n_seeds = len(runs)
    share = full_data_share(data, full)
    sig_columns = [PRIMARY, *(f"dev NLL {t}" for t in TASKS), "ASR WER", "ST BLEU", "SQA F1"]
    sig_md, sig_full, sig_records = significance(data, sig_columns)
    (out / "significance.md").write_text("# Every pair of variants, every measure\n" + sig_full + "\n")
    totals = phase_totals(tracker)
    md = ["## Results at 10 % of the task data", "", main_table(data, n_seeds), ""]
    md += ["## Speech→text R@1 (%) per LLM layer after stage 1", "", layer_table(data), ""]
    md += ["## Stage-2 learning curves: mean dev NLL over tasks (nats/token)", "", curve_table(data), ""]
    seeds = seed_table(data)
    if seeds:
        md += ["## Every seed", "", seeds, ""]
    terms = stage1_terms(data)
    if terms:
        md += ["## Final stage-1 contrastive loss per layer (ln B = chance)", "", terms, ""]
    shift = pos_shift_summary(data)
    if shift:
        md += [
            "## Position shift vs none",
            "",
            f"contr-cos-all (fixed) with and without a random shift of both passes' position ids, over "
            f"{shift['seeds']} seed(s): the final stage-1 loss per layer differs by at most "
            f"{shift['max_loss_diff']:.2g} nats and R@1 per layer by at most {shift['max_r1_diff']:.2g} points "
            f"({shift['r1_cells']} layer×seed cells). With rotary position embeddings attention sees relative "
            "positions only, so a constant offset changes nothing but rounding: the shift does not matter "
            "for a Llama-style LLM.",
            "",
        ]
    balance = balance_table(data)
    if balance:
        md += [
            "## contr-cos-all: per-layer loss and gradient norm at the projector",
            "",
            "Gradient norm of each layer's weighted InfoNCE term with respect to the projector's parameters "
            "(`--log_term_grad_norms`); share = that norm over the sum of all layers' norms.",
            balance,
            "",
        ]
    if share:
        kept = (
            f"{100 * share['share']:.0f} % of the full-data NLL gain is kept at 10 %."
            if math.isfinite(share["share"])
            else "the 100 % run gained nothing over the start, so there is no share to report."
        )
        md += [
            "## Full data",
            "",
            f"{variant_labels()[share['variant']]} (the lowest dev NLL on seed {share['seed']}, whose stage-1 projector "
            f"it starts from): dev NLL {share['nll_start']:.3f} at the start "
            f"of stage 2, {share['nll_10']:.3f} after 10 %, {share['nll_100']:.3f} after 100 % — {kept}",
            "",
        ]
        md += [
            f"- {t}: {v['10%']:.1f} at 10 %, {v['100%']:.1f} at 100 %" for t, v in share["metrics"].items()
        ]
        n10 = phase_info(runs[share["seed"]][share["variant"]]["finetune"]).get("train_samples")
        n100 = share.get("train_samples_100")
        if n10 and n100:
            seen10, seen100 = (
                budget.finetune_steps * budget.stage_batch_size(2),
                budget.full_data_steps * budget.stage_batch_size(2),
            )
            md.append(
                f"\nExposure: the 10 % runs see {seen10} samples ({seen10 / n10:.1f} epochs of {n10}), the 100 % "
                f"run {seen100} ({seen100 / n100:.2f} epochs of {n100}); the paper fine-tunes 2 epochs in both."
            )
        md.append("")
    md += [
        "## Which differences are significant",
        sig_md,
        "",
        "(Every pair on every measure: significance.md.)",
        "",
    ]
    md.append("Wall time per phase kind (s): " + ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
    cpu = cpu_totals(out)
    if cpu:
        md.append("\nCPU time per phase kind (s): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    elapsed = time.time() - tracker.t0
    md.append(f"\nThis invocation: {elapsed:.0f} s wall with {tracker.workers} worker process(es).")
    md.append(f"\nMachine: {machine()}")
    (out / "results.md").write_text("\n".join(md) + "\n")
    payload = {
        "variants": {k: _jsonable(v) for k, v in data.items()},
        "full_data": share,
        "pos_shift": shift,
        "significance": sig_records,
        "timings": tracker.timings,
        "phase_totals": totals,
        "cpu_totals": cpu,
        # Relative to the output directory when inside it, so a copied results.json names no machine path.
        "base_models": {"path": _relative(base, out), **phase_info(base)},
        "budget": _jsonable(vars(budget)),
        "machine": machine(),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    write_plots(out, data, runs, variant_labels())
    return payload


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value
