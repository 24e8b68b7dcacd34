"""The study, top to bottom: corpus -> base models -> stage 1 per variant -> stage 2 (10 %) per
variant -> evaluation -> report. Every training run goes through the user-facing scripts."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from llava.demo.phases import python, run_command, run_phase

logger = logging.getLogger("llava.demo")
REPO = Path(__file__).resolve().parents[2]

# Variant name -> stage-1 script (None: no pretraining, the projector starts random in stage 2).
VARIANTS: dict[str, str | None] = {
    "none": None,
    "asr": "pretrain-asr",
    "contr-cos-emb": "pretrain-contr-cos-emb",
    "contr-cos-all": "pretrain-contr-cos-all",
    "contr-cos-all+asr": "pretrain-contr-cos-all+asr",
    "mixed-nwp": "pretrain-mixed-nwp",
}
MIXED_VARIANTS = {"mixed-nwp", "contr-cos-emb+mixed"}
EVAL_SETS = {"ASR": "eval_asr.yml", "ST": "eval_st.yml", "SQA": "eval_sqa.yml"}


@dataclass
class Budget:
    """How much work each phase does; `smoke` is for CI, `default` is the README's study."""

    corpus_size: str  # llava.demo.corpus --size
    base_budget: str  # llava.demo.base_models.build --budget
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    learning_rate: float
    eval_limit: int  # utterances per test set
    diag_limit: int  # utterances for the alignment diagnostics
    projector: list[str] = field(
        default_factory=lambda: [
            "--mm_qformer_hidden_size",
            "128",
            "--mm_qformer_num_heads",
            "4",
            "--mm_qformer_intermediate_size",
            "512",
            "--mm_qformer_num_hidden_layers",
            "2",
        ]  # fmt: skip
    )

    def projector_options(self) -> dict:
        """The projector flags as Q-Former settings (for in-process model building)."""
        names = {
            "--mm_qformer_hidden_size": "hidden_size",
            "--mm_qformer_num_heads": "num_heads",
            "--mm_qformer_intermediate_size": "intermediate_size",
            "--mm_qformer_num_hidden_layers": "num_layers",
        }
        return {names[k]: int(v) for k, v in zip(self.projector[::2], self.projector[1::2])}


BUDGETS = {
    "smoke": Budget(
        "tiny",
        "smoke",
        pretrain_steps=4,
        finetune_steps=4,
        batch_size=4,
        learning_rate=1e-3,
        eval_limit=8,
        diag_limit=16,
    ),  # fmt: skip
    "default": Budget(
        "small",
        "small",
        pretrain_steps=100,
        finetune_steps=60,
        batch_size=8,
        learning_rate=1e-3,
        eval_limit=48,
        diag_limit=96,
    ),  # fmt: skip
}


@dataclass
class Study:
    out: Path
    budget: Budget
    seeds: list[int]
    variants: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    # ----------------------------------------------------------------------------- shared phases
    def corpus(self) -> Path:
        """The synthesiser writes absolute paths into its configs, so it builds in place; it is
        itself resumable (a finished corpus is found by its manifest, files are written atomically)."""
        path = self.out / "corpus"
        t0 = time.perf_counter()
        run_command(
            "corpus",
            [
                python(),
                "-m",
                "llava.demo.corpus",
                "--out",
                str(path),
                "--size",
                self.budget.corpus_size,
                "--seed",
                "0",
            ],
            self.out / "corpus.log",
        )
        self.timings["corpus"] = json.loads((path / "manifest.json").read_text()).get(
            "build_seconds", time.perf_counter() - t0
        )
        return path

    def base_models(self, corpus: Path) -> Path:
        def work(tmp: Path) -> dict:
            run_command(
                "base models",
                [
                    python(),
                    "-m",
                    "llava.demo.base_models.build",
                    "--corpus",
                    str(corpus),
                    "--out",
                    str(tmp),
                    "--budget",
                    self.budget.base_budget,
                ],  # fmt: skip
                self.out / "base_models.log",
            )
            return json.loads((tmp / "report.json").read_text())

        return run_phase("base models", self.out / "base", work, self.timings)

    # ----------------------------------------------------------------------------- per seed / variant
    def _env(self, base: Path, data_config: Path, output: Path, **extra: str) -> dict[str, str]:
        return {
            "MODEL_PATH": str(base / "llm"),
            "AUDIO_ENCODER": str(base / "encoder"),
            "DATA_CONFIG": str(data_config),
            "OUTPUT_DIR": str(output),
            "NUM_GPUS": "0",
            **extra,
        }

    def _train_args(self, steps: int, seed: int) -> list[str]:
        b = self.budget
        return [
            "--max_steps", str(steps), "--per_device_train_batch_size", str(b.batch_size),
            "--gradient_accumulation_steps", "1", "--learning_rate", str(b.learning_rate),
            "--save_strategy", "no", "--logging_steps", "5", "--report_to", "tensorboard",
            "--disable_tqdm", "True", "--dataloader_num_workers", "0", "--seed", str(seed), *b.projector,
        ]  # fmt: skip

    def pretrain(self, variant: str, seed: int, base: Path, corpus: Path) -> Path:
        script = VARIANTS[variant]
        name = f"seed{seed}/pretrain/{variant}"

        def work(tmp: Path) -> None:
            if script is None:
                self._random_projector(base, tmp, seed)
                return
            config = (
                corpus
                / "configs"
                / ("pretrain_mixed.yml" if variant in MIXED_VARIANTS else "pretrain_asr.yml")
            )
            run_command(
                name,
                [
                    "bash",
                    str(REPO / "scripts" / "pretrain" / f"{script}.sh"),
                    *self._train_args(self.budget.pretrain_steps, seed),
                ],  # fmt: skip
                tmp / "train.log",
                env=self._env(base, config, tmp),
            )

        return run_phase(name, self.out / name, work, self.timings)

    def _random_projector(self, base: Path, out: Path, seed: int) -> None:
        """The "no pretraining" starting point, saved like any stage-1 checkpoint."""
        import torch

        from llava.model import apply_training_mode, build_model, save_trainable
        from llava.train.arguments import ModelArguments
        from llava.train.train import parse_args

        model_args: ModelArguments = parse_args(["--output_dir", str(out), *self.budget.projector])[0]
        torch.manual_seed(seed)
        model, _ = build_model(
            str(base / "encoder"),
            str(base / "llm"),
            projector_type=model_args.mm_speech_projector_type,
            projector_config=model_args.projector_config(),
        )
        save_trainable(apply_training_mode(model), out)

    def finetune(self, variant: str, seed: int, base: Path, corpus: Path, pretrained: Path) -> Path:
        name = f"seed{seed}/finetune/{variant}"

        def work(tmp: Path) -> None:
            args = self._train_args(self.budget.finetune_steps, seed)
            if VARIANTS[variant] is None:
                script, env_extra = "finetune_no_pretraining_100%", {}
                args += ["--data_subset", "0.1"]  # the same 10 % as every other variant
            else:
                script, env_extra = "finetune_mixed_tasks_10%", {"PRETRAINED_PROJECTOR": str(pretrained)}
            run_command(
                name,
                ["bash", str(REPO / "scripts" / "finetune" / f"{script}.sh"), *args],
                tmp / "train.log",
                env=self._env(base, corpus / "configs" / "finetune_mixed.yml", tmp, **env_extra),
            )

        return run_phase(name, self.out / name, work, self.timings)

    def evaluate(self, variant: str, seed: int, corpus: Path, model_dir: Path) -> Path:
        """The same `evaluate` as `llava/eval/eval.py`, in-process: one model load for all test sets."""
        name = f"seed{seed}/eval/{variant}"

        def work(tmp: Path) -> None:
            from llava.eval.eval import evaluate
            from llava.eval.generation import GenerationSettings
            from llava.model import load_pretrained_model

            model, tokenizer = load_pretrained_model(model_dir)
            for task, config in EVAL_SETS.items():
                evaluate(
                    model,
                    tokenizer,
                    corpus / "configs" / config,
                    tmp / task,
                    settings=GenerationSettings(max_new_tokens=40),
                    batch_size=16,
                    limit=self.budget.eval_limit,
                    model_path=str(model_dir),
                    progress=False,
                )

        return run_phase(name, self.out / name, work, self.timings)

    def diagnose(self, variant: str, seed: int, corpus: Path, pretrained: Path) -> Path:
        """Layer-wise speech/text alignment of the stage-1 projector (before any fine-tuning)."""
        name = f"seed{seed}/alignment/{variant}"

        def work(tmp: Path) -> dict:
            from llava.demo.diagnose import alignment_of_checkpoint

            return alignment_of_checkpoint(
                pretrained, corpus / "configs" / "eval_asr.yml", tmp, self.budget.diag_limit
            )

        return run_phase(name, self.out / name, work, self.timings)

    # ----------------------------------------------------------------------------- the whole study
    def run(self) -> dict:
        corpus = self.corpus()
        base = self.base_models(corpus)
        runs: dict[int, dict[str, dict[str, Path]]] = {}
        for seed in self.seeds:
            runs[seed] = {}
            for variant in self.variants:
                pre = self.pretrain(variant, seed, base, corpus)
                diag = self.diagnose(variant, seed, corpus, pre)
                ft = self.finetune(variant, seed, base, corpus, pre)
                ev = self.evaluate(variant, seed, corpus, ft)
                runs[seed][variant] = {"pretrain": pre, "alignment": diag, "finetune": ft, "eval": ev}
        from llava.demo.report import write_report

        return write_report(self.out, runs, base, self.timings)
