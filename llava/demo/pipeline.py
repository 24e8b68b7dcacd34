"""The study, top to bottom: corpus -> base models -> per seed and variant: stage 1 -> alignment ->
stage 2 on 10 % (with checkpoints for the learning curve) -> evaluation -> one 100 % run of the best
variant -> report. Every training run goes through the user-facing scripts.

Directory layout under the study's output directory (each phase directory ends with DONE.json):

    corpus/  base/  feature_cache/
    seed{s}/pretrain/{variant}   stage-1 projector (the "none" variant: a random one)
    seed{s}/alignment/{variant}  speech->text R@1 per LLM layer of the stage-1 projector
    seed{s}/finetune/{variant}   stage 2 on 10 % of the task data; checkpoint-{k}/ along the way
    seed{s}/eval/{variant}       test-set scores (ASR/ST/SQA) and dev NLL per task at each step
    full_data/{variant}/...      the best variant fine-tuned on 100 % (seed 0)
    results.md results.json *.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llava.demo.corpus.build import built_corpus
from llava.demo.corpus.spelled import write_spelled_asr
from llava.demo.parallel import run_parallel
from llava.demo.phases import (
    DiskScan,
    DivergedError,
    PhaseError,
    Tracker,
    diverged,
    python,
    run_command,
    run_phase,
    settings_digest,
)
from llava.demo.script_runs import run_script
from llava.demo.variants import FIX_WEIGHT, VARIANTS, Budget, Variant

logger = logging.getLogger("llava.demo")
REPO = Path(__file__).resolve().parents[2]


# Decoded waveforms a training run keeps in memory (MiB per data source): the corpus's stage-1 audio is
# 251 MiB decoded, and a stage-1 run sees each utterance about 5 times (decoding was ~7 % of a step).
AUDIO_MEMO_MB = 512


def _supported_training_flags() -> set[str]:
    """Flag names the training entry point accepts (newer options are used only when present)."""
    from llava.train.arguments import DataArguments, LossArguments, ModelArguments, TrainingArguments

    return {f.name for cls in (ModelArguments, DataArguments, LossArguments, TrainingArguments) for f in dataclasses.fields(cls)}  # fmt: skip


@dataclass
class Study:
    out: Path
    budget: Budget
    seeds: list[int]
    variants: list[str]
    progress: bool = True
    full_data: bool = True
    base_dir: Path | None = None  # use these base models (encoder/, llm/) instead of shipped/built ones
    workers: int = 1  # (seed, variant) chains run in parallel processes (llava.demo.parallel)
    tracker: Tracker = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
        chains = self.chains()
        tuned = sum(VARIANTS[key].finetune for key, _ in chains)
        full = int(self.full_data and self.budget.full_data_steps > 0 and tuned > 0)
        self.tracker = Tracker(
            {
                "pretrain": len(chains),
                "alignment": len(chains),
                "finetune": tuned + full,
                "eval": tuned + full,
                "cache": int(self.budget.fill_cache),
            },
            progress=self.progress,
            workers=self.workers,
            scan=DiskScan(self.out),
        )
        self._flags: set[str] | None = None

    @property
    def cache_dir(self) -> Path:
        return self.out / "feature_cache"

    def _supports(self, flag: str) -> bool:
        if self._flags is None:
            self._flags = _supported_training_flags()
        return flag in self._flags

    # ----------------------------------------------------------------------------- shared phases
    def corpus(self) -> Path:
        """The synthesiser writes absolute paths into its configs, so it builds in place; it is
        itself resumable (a finished corpus is found by its manifest, files are written atomically)."""
        path = self.out / "corpus"
        # A finished corpus is found here, without a synthesiser process (its start-up alone is ~7 s).
        if built_corpus(path, self.budget.corpus_size, 0) is None:
            bar = self.tracker.bar("corpus", None, "s")
            cmd = [python(), "-m", "llava.demo.corpus", "--out", str(path), "--size", self.budget.corpus_size]
            run_command("corpus", [*cmd, "--seed", "0"], self.out / "corpus.log", bar=bar)
            bar.close()
        manifest = json.loads((path / "manifest.json").read_text())
        self.tracker.record("corpus", "corpus", manifest.get("build_seconds", 0.0))
        self.tracker.summary(
            "corpus", manifest.get("build_seconds", 0.0), {"summary": str(manifest.get("counts"))}
        )
        return path

    def base_models(self, corpus: Path) -> Path:
        """The shipped base models when the package has them (checked against their recorded
        hashes), else built from the corpus with the builder."""

        if self.base_dir is not None:
            given = Path(self.base_dir).resolve()
            missing = [d for d in ("encoder", "llm") if not (given / d).is_dir()]
            if missing:
                raise ValueError(f"--base-models {given}: no {' or '.join(missing)} directory inside")
            self.tracker.summary("base models", 0.0, {"summary": f"given: {given}"})
            return given

        def work(tmp: Path) -> dict:
            shipped = _shipped_base_models()
            if shipped is not None:
                try:
                    shipped(tmp)
                except Exception as exc:  # a missing or altered file: refuse, never train on it
                    raise PhaseError(f"shipped base models refused: {exc}") from exc
                report = tmp / "report.json"
                info = json.loads(report.read_text()) if report.is_file() else {}
                return {
                    "source": "shipped",
                    "report": info,
                    "summary": "shipped base models (hashes checked)",
                }
            cmd = [python(), "-m", "llava.demo.base_models.build", "--corpus", str(corpus), "--out", str(tmp)]
            bar = self.tracker.bar("base models", None, "s")
            run_command("base models", [*cmd, "--budget", self.budget.base_budget], self.out / "base_models.log", bar=bar)  # fmt: skip
            bar.close()
            info = json.loads((tmp / "report.json").read_text())
            return {"source": "built", "report": info, "summary": f"built ({self.budget.base_budget})"}

        return run_phase("base models", self.out / "base", work, self.tracker, kind="base")

    def fill_cache(self, base: Path, corpus: Path) -> Path | None:
        """Encode every utterance of the corpus once, with one process per core, into the frozen-feature
        cache that every training run and evaluation then reads (the encoder is most of a step's cost)."""
        if self._cache() is None or not self.budget.fill_cache:
            return None

        def work(tmp: Path) -> dict:
            workers = str(max(1, min(2, os.cpu_count() or 1)))
            # Stage 2's config holds the sentences (also stage 1's audio) and the passages; the few test
            # utterances evaluated are encoded on first use.
            configs = ["finetune_mixed.yml"]
            shards = re.compile(r"worker (\d+): (\d+)/(\d+) rows")  # the fill's progress lines
            for config in configs:
                bar = self.tracker.bar(f"feature cache ({config})", None, "utt")
                cmd = [python(), "-m", "llava.model.feature_cache", "--data_config", str(corpus / "configs" / config),
                       "--audio_encoder", str(base / "encoder"), "--out", str(self.cache_dir), "--workers", workers]  # fmt: skip
                run_command(
                    "feature cache", cmd, tmp / f"fill_{Path(config).stem}.log", bar=bar, shards=shards
                )
                bar.close()
            return {"summary": f"{self.cache_dir} ({workers} processes)"}

        return run_phase("feature cache", self.out / "feature_cache_fill", work, self.tracker, kind="cache")

    # ----------------------------------------------------------------------------- training runs
    def _env(self, base: Path, data_config: Path, output: Path, **extra: str) -> dict[str, str]:
        return {
            "MODEL_PATH": str(base / "llm"),
            "AUDIO_ENCODER": str(base / "encoder"),
            "DATA_CONFIG": str(data_config),
            "OUTPUT_DIR": str(output),
            "NUM_GPUS": "0",
            **extra,
        }

    def _train_args(self, stage: int, steps: int, seed: int, lr: float, variant: Variant) -> list[str]:
        b = self.budget
        args = [
            "--max_steps", str(steps), "--per_device_train_batch_size", str(b.stage_batch_size(stage)),
            "--gradient_accumulation_steps", "1", "--learning_rate", str(lr),
            "--logging_steps", str(max(1, steps // 10)), "--logging_first_step", "True",
            "--report_to", "none", "--disable_tqdm", "False", "--dataloader_num_workers", "0",
            "--seed", str(seed), *b.projector_flags(), *variant.projector_flags,
        ]  # fmt: skip
        if self._supports("audio_feature_cache"):
            args += ["--audio_feature_cache", str(self.cache_dir)]
        if self._supports("audio_memo_mb"):
            args += ["--audio_memo_mb", str(AUDIO_MEMO_MB)]
        return args

    def _layer_weights(self, base: Path) -> list[str]:
        from transformers import AutoConfig

        from llava.model.layers import resolve_layers

        layers = resolve_layers("all", AutoConfig.from_pretrained(base / "llm").num_hidden_layers)
        spec = ",".join(f"{k}:{1.0 if k == 0 else FIX_WEIGHT:g}" for k in layers)
        return ["--contrastive_layer_weights", spec]

    def _train(self, name: str, script: Path, args: list[str], env: dict, tmp: Path, steps: int) -> dict:
        """One training run through a user-facing script; a run that stopped on non-finite losses,
        or ended with non-finite weights (every later step skipped), raises `DivergedError`."""
        bar = self.tracker.bar(name, steps, "step")
        try:
            run_script(name, script, args, tmp / "train.log", env=env, bar=bar)
        finally:
            bar.close()
        info = _training_summary(tmp)
        bad = _nonfinite_tensors(tmp)
        if bad:
            raise DivergedError(
                f"non-finite weights in {len(bad)} tensors (e.g. {bad[0]}) after "
                f"{info.get('nonfinite_steps', 0)} non-finite steps; log: {tmp / 'train.log'}"
            )
        return info

    def _portable(self, args: list[str]) -> list[str]:
        """`args` with this study's directory written as `<out>`: a moved study keeps its phases."""
        root = str(self.out)
        return [a.replace(root, "<out>") for a in args]

    def pretrain(self, key: str, seed: int, base: Path, corpus: Path) -> Path:
        variant = VARIANTS[key]
        name = f"seed{seed}/pretrain/{key}"
        args: list[str] = []
        if variant.script is not None:
            args = self._train_args(1, self.budget.pretrain_steps, seed, self.budget.learning_rate, variant)
            args += ["--save_strategy", "no", *variant.stage1_flags]
            if variant.log_grad_norms and self._supports("log_term_grad_norms"):
                args += ["--log_term_grad_norms", "True"]
            if variant.fix_weights:
                args += self._layer_weights(base)
            settings = {"script": variant.script, "data": variant.data, "args": self._portable(args)}
        else:
            settings = {
                "random projector": self.budget.projector_type,
                "options": {**self.budget.projector_options(), **variant.projector_options()},
                "seed": seed,
            }
        settings["corpus"] = self.budget.corpus_size

        def work(tmp: Path) -> dict | None:
            if variant.script is None:
                self._random_projector(base, tmp, seed, variant)
                return {"summary": "random projector"}
            if variant.spelled_transcripts:
                write_spelled_asr(corpus)  # derived from the corpus on first use
            env = self._env(base, corpus / "configs" / variant.data, tmp)
            script = REPO / "scripts" / "pretrain" / f"{variant.script}.sh"
            info = self._train(name, script, args, env, tmp, self.budget.pretrain_steps)
            return {**info, "script": script.name, "args": args}

        return run_phase(name, self.out / name, work, self.tracker, kind="pretrain", settings=settings)

    def _random_projector(self, base: Path, out: Path, seed: int, variant: Variant) -> None:
        """The "no pretraining" starting point, saved like any stage-1 checkpoint (stage 2 of this
        variant starts from its own seeded random projector; this one gives the step-0 measurements)."""
        import torch

        from llava.model import apply_training_mode, build_model, save_trainable

        torch.manual_seed(seed)
        model, _ = build_model(
            str(base / "encoder"),
            str(base / "llm"),
            projector_type=self.budget.projector_type,
            projector_config={**self.budget.projector_options(), **variant.projector_options()},
        )
        save_trainable(apply_training_mode(model), out)

    def finetune(self, key: str, seed: int, base: Path, corpus: Path, pretrained: Path, full: bool = False) -> Path:  # fmt: skip
        from llava.demo.curves import curve_every

        variant = VARIANTS[key]
        name = f"full_data/{key}/finetune" if full else f"seed{seed}/finetune/{key}"
        steps = self.budget.full_data_steps if full else self.budget.finetune_steps
        args = self._train_args(2, steps, seed, self.budget.finetune_learning_rate, variant)
        args += self.budget.finetune_lora_flags()
        every = curve_every(steps, self.budget.curve_points)
        args += ["--save_strategy", "steps", "--save_steps", str(every), "--save_total_limit", "1000"]
        env_extra: dict[str, str] = {}
        if variant.script is None:
            script = "finetune_no_pretraining_100%"
            args += ["--data_subset", "1.0" if full else "0.1"]  # the same subset as every variant
        else:
            script = "finetune_mixed_tasks_100%" if full else "finetune_mixed_tasks_10%"
            env_extra["PRETRAINED_PROJECTOR"] = str(pretrained)
        settings = {"script": script, "args": self._portable(args), "stage 1": settings_digest(pretrained)}

        def work(tmp: Path) -> dict:
            env = self._env(base, corpus / "configs" / "finetune_mixed.yml", tmp, **env_extra)
            info = self._train(name, REPO / "scripts" / "finetune" / f"{script}.sh", args, env, tmp, steps)
            return {**info, "script": f"{script}.sh", "args": args}

        return run_phase(name, self.out / name, work, self.tracker, kind="finetune", settings=settings)

    # ----------------------------------------------------------------------------- measurements
    def alignment(self, key: str, seed: int, corpus: Path, pretrained: Path) -> Path:
        """Speech->text alignment per layer of the stage-1 projector (before any fine-tuning)."""
        name = f"seed{seed}/alignment/{key}"

        def work(tmp: Path) -> dict:
            from llava.demo.diagnose import alignment_of_checkpoint

            bar = self.tracker.bar(name, self.budget.diag_limit, "utt")
            try:
                result = alignment_of_checkpoint(
                    pretrained,
                    corpus / "configs" / "eval_asr.yml",
                    tmp,
                    self.budget.diag_limit,
                    self._cache(),
                    bar.update,
                )
            finally:
                bar.close()
            r1 = {k: 100 * v["r1_speech2text"] for k, v in result["layers"].items()}
            return {**result, "summary": "R@1 " + " ".join(f"L{k}={v:.0f}" for k, v in r1.items())}

        settings = {"diag_limit": self.budget.diag_limit, "stage 1": settings_digest(pretrained)}
        return run_phase(name, self.out / name, work, self.tracker, kind="alignment", settings=settings)

    def _cache(self) -> Path | None:
        """The shared feature-cache directory, when this version has the cache (training flag too)."""
        try:
            import llava.model.feature_cache  # noqa: F401
        except ImportError:
            return None
        return self.cache_dir if self._supports("audio_feature_cache") else None

    def evaluate(self, key: str, seed: int, corpus: Path, pretrained: Path, finetuned: Path, full: bool = False) -> Path:  # fmt: skip
        """Test-set scores of the final model and dev NLL per task along stage 2 (in-process)."""
        name = f"full_data/{key}/eval" if full else f"seed{seed}/eval/{key}"
        steps = self.budget.full_data_steps if full else self.budget.finetune_steps

        def work(tmp: Path) -> dict:
            from llava.demo.evaluation import evaluate_run

            return evaluate_run(
                tmp, corpus, pretrained, finetuned, steps, self.budget, self._cache(), self.tracker, name
            )

        b = self.budget
        settings = {
            "limits": [b.eval_limit, b.nll_limit, b.curve_points, b.max_new_tokens],
            "stage 1": settings_digest(pretrained),
            "stage 2": settings_digest(finetuned),
        }
        return run_phase(name, self.out / name, work, self.tracker, kind="eval", settings=settings)

    # ----------------------------------------------------------------------------- the whole study
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        corpus = self.corpus()
        base = self.base_models(corpus)
        self.fill_cache(base, corpus)
        jobs = [(key, seed, base, corpus) for key, seed in self.chains()]
        first = [i for i, job in enumerate(jobs) if job[1] == self.seeds[0]]

        def full_data_job(done: dict[int, dict]) -> list | None:
            # The 100 % run starts as soon as the first seed's chains are done (it then runs beside the
            # other seeds' chains instead of after them), for the best variant on that seed.
            if any(i not in done for i in first):
                return None
            key = self._full_data_variant({self.seeds[0]: {jobs[i][0]: done[i] for i in first}})
            return [] if key is None else [(self._full_data, (key, base, corpus))]

        chains, extra = run_parallel(self._chain, jobs, self.workers, follow_up=full_data_job)
        by_chain = {(key, seed): dirs for (key, seed, _, _), dirs in zip(jobs, chains)}
        # Tables and plots list the variants in the study's order, whatever order the chains ran in.
        runs: dict[int, dict[str, dict[str, Path]]] = {}
        for seed in self.seeds:
            for key in self.variants:
                if (key, seed) in by_chain:
                    runs.setdefault(seed, {})[key] = by_chain[key, seed]
        full = extra[0] if extra else None
        for name, kind, seconds in self.tracker.finished():  # phases finished in workers or earlier runs
            if name not in self.tracker.timings:
                self.tracker.record(name, kind, seconds)
        from llava.demo.report import write_report

        return write_report(self.out, runs, full, base, self.tracker, self.budget)

    def chains(self) -> list[tuple[str, int]]:
        """The (variant, seed) chains of the study in the order they start: seed by seed (the first
        seed's chains decide the 100 % run), longest first within a seed (`Variant.chain_seconds`, so
        the short ones fill the end). A variant with `first_seeds` runs on that many seeds only."""
        longest_first = sorted(self.variants, key=lambda key: -VARIANTS[key].chain_seconds)
        return [
            (key, seed)
            for i, seed in enumerate(self.seeds)
            for key in longest_first
            if not VARIANTS[key].first_seeds or i < VARIANTS[key].first_seeds
        ]

    def _chain(self, key: str, seed: int, base: Path, corpus: Path) -> dict[str, Path]:
        dirs = {"pretrain": self.pretrain(key, seed, base, corpus)}
        if diverged(dirs["pretrain"]):
            return dirs
        dirs["alignment"] = self.alignment(key, seed, corpus, dirs["pretrain"])
        if not VARIANTS[key].finetune:
            return dirs
        dirs["finetune"] = self.finetune(key, seed, base, corpus, dirs["pretrain"])
        if diverged(dirs["finetune"]):
            return dirs
        dirs["eval"] = self.evaluate(key, seed, corpus, dirs["pretrain"], dirs["finetune"])
        return dirs

    def _full_data_variant(self, first_seed_runs: dict[int, dict[str, dict[str, Path]]]) -> str | None:
        """The variant of the 100 % run: the pretrained one with the lowest mean dev NLL at 10 % on the
        first seed (None when the run is off or no variant has a finite NLL)."""
        if not self.full_data or self.budget.full_data_steps <= 0:
            return None
        from llava.demo.report import best_variant

        return best_variant(first_seed_runs)

    def _full_data(self, key: str, base: Path, corpus: Path) -> dict:
        """Stage 2 on 100 % of the task data from the first seed's stage-1 projector of `key`."""
        seed = self.seeds[0]
        pre = self.out / f"seed{seed}" / "pretrain" / key
        ft = self.finetune(key, seed, base, corpus, pre, full=True)
        if diverged(ft):
            return {"variant": key, "finetune": ft}
        ev = self.evaluate(key, seed, corpus, pre, ft, full=True)
        return {"variant": key, "finetune": ft, "eval": ev}


def _shipped_base_models():
    """`shipped_base_models(dest)` when this version ships base models (its hash record exists);
    it copies them to `dest` after checking every file's hash, and refuses altered files."""
    try:
        from llava.demo.base_models import shipped
    except ImportError:
        return None
    record = getattr(shipped, "RECORD_PATH", None)
    if record is None or not Path(record).is_file():
        return None
    return shipped.shipped_base_models


def _nonfinite_tensors(run_dir: Path) -> list[str]:
    """Names of the saved tensors of a run that hold NaN or inf."""
    import torch

    from llava.model.checkpoint import read_weights

    try:
        weights = read_weights(run_dir)
    except FileNotFoundError:
        return []
    return sorted(
        k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    )


def _training_summary(run_dir: Path) -> dict:
    """Headline of a finished training run from its trainer_state.json: final loss and terms."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return {}
    history = json.loads(path.read_text()).get("log_history", [])
    logs = [h for h in history if "loss" in h]
    if not logs:
        return {}
    last = logs[-1]
    info = {
        "final_loss": last["loss"],
        "nonfinite_steps": max((h.get("nonfinite_steps", 0) for h in history), default=0),
    }
    terms = {k: v for k, v in last.items() if k.startswith(("contrastive_layer_", "nwp"))}
    summary = f"step {last.get('step')} loss {last['loss']:.3f}"
    if info["nonfinite_steps"]:
        summary += f", {info['nonfinite_steps']} non-finite steps skipped"
    log = run_dir / "train.log"
    found = re.findall(r"\[train\]: (\d+) samples", log.read_text(errors="replace")) if log.is_file() else []
    if found:  # the size of the training set this run drew from (to state how many epochs it saw)
        info["train_samples"] = int(found[-1])
    return {**info, "final_terms": terms, "summary": summary}
