"""What the study runs: the pretraining variants and the budgets (how much work each phase does)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from llava.demo.corpus.spelled import CONFIG_NAME as SPELLED_CONFIG

# ------------------------------------------------------------------------------------- variants
# The remedy for contr-cos-all's gradient imbalance (`python -m llava.demo.diagnose gradients`, shipped
# base models): at step 0 the deeper layers' InfoNCE terms carry 92-94 % of the gradient at the
# projector and the embedding-layer term 6-8 %. Weighting every layer above 0 by 0.05 gives layer 0
# half of it; after 150 steps its dev InfoNCE is 0.89 / 0.90 nats (seeds 0 / 1) against 1.10 / 1.26
# as the paper weighs the layers (chance ln 8 = 2.08), while the last layer's ends higher (1.18 / 1.22
# against 1.02 / 1.06): a trade, which the study's downstream numbers judge. Matching the projector's
# output norm to the token embeddings (--projector_output_norm rms_match) fixes the input scale but not
# the share (layer 0: 1.32 / 1.31), so the fixed variant changes the loss weights only and keeps the
# paper's projector (stage 2 then differs from the other variants in its starting point only).
# (Those figures: the Q-Former and the first-phase LLM. With the study's current projector and LLM the
# study itself logs the shares: layer 0 carries 5 % at step 1 with equal weights, 52 % with these.)
FIX_WEIGHT = 0.05  # weight of every layer above 0 in the fixed variant (layer 0 weighs 1)


@dataclass(frozen=True)
class Variant:
    """A pretraining variant: its stage-1 script and the flags it adds."""

    label: str  # the name in tables and plots
    script: str | None  # scripts/pretrain/<script>.sh; None: no stage 1 (random projector)
    stage1_flags: tuple[str, ...] = ()  # added to stage 1 only
    projector_flags: tuple[str, ...] = ()  # projector settings, passed to both stages
    data: str = "pretrain_asr.yml"  # the corpus's stage-1 data config
    fix_weights: bool = False  # down-weight the contrastive terms above layer 0 (FIX_WEIGHT)
    finetune: bool = True  # run stage 2 and the evaluations (else stage 1 and alignment only)
    log_grad_norms: bool = False  # stage 1 logs each loss term's gradient norm at the projector
    # Stage 1 reads the transcripts spelled letter by letter (llava.demo.corpus.spelled, written on
    # first use as `data`), the form the shipped LLM reads speech in.
    spelled_transcripts: bool = False
    exploratory: bool = False  # left out of the default run (`--variants` adds it)
    first_seeds: int = 0  # run on the study's first N seeds only (0: every seed)
    # Seconds one (seed, variant) chain took in the default run at 3048aad (stage 1, alignment,
    # stage 2, evaluation; mean over seeds; the exploratory variant's from an earlier budget). Only
    # orders the work: within a seed the longest chains start first, so the study does not end with
    # one worker running a long chain while the other waits.
    chain_seconds: float = 0.0

    def projector_options(self) -> dict:
        """`projector_flags` as projector settings (for building a model in-process)."""
        names = {"--projector_output_norm": "output_norm"}
        flags = self.projector_flags
        return {names[k]: v for k, v in zip(flags[::2], flags[1::2])}


VARIANTS: dict[str, Variant] = {
    "none": Variant("none", None, chain_seconds=75),
    "asr": Variant("asr", "pretrain-asr", chain_seconds=260),
    "contr-cos-emb": Variant("contr-cos-emb", "pretrain-contr-cos-emb", chain_seconds=117),
    "contr-cos-all": Variant(
        "contr-cos-all (as paper)", "pretrain-contr-cos-all", log_grad_norms=True, chain_seconds=220
    ),
    "contr-cos-all-fixed": Variant(
        "contr-cos-all (fixed)",
        "pretrain-contr-cos-all",
        fix_weights=True,
        log_grad_norms=True,
        chain_seconds=230,
    ),
    "contr-cos-all+asr": Variant("contr-cos-all+asr", "pretrain-contr-cos-all+asr", chain_seconds=370),
    "mixed-nwp": Variant("mixed-nwp", "pretrain-mixed-nwp", data="pretrain_mixed.yml", chain_seconds=225),
    # contr-cos-emb with the contrastive text side in the form the tiny LLM reads speech in.
    "contr-cos-emb-spelled": Variant(
        "contr-cos-emb (spelled text)",
        "pretrain-contr-cos-emb",
        data=SPELLED_CONFIG,
        spelled_transcripts=True,
        exploratory=True,
        chain_seconds=95,
    ),
    "pos-shift": Variant(
        "contr-cos-all (fixed) + pos-shift",
        "pretrain-contr-cos-all-pos-shift",
        fix_weights=True,
        finetune=False,
        # Under rotary positions a constant offset changes the stage-1 losses only by rounding (at most
        # 3.4e-5 nats per layer over 3 seeds at the default budget), so one seed answers the question;
        # the other two cost about 80 s of the default run's wall time.
        first_seeds=1,
        chain_seconds=148,
    ),
}


# The comparisons the study is built to make (each pretraining variant against no pretraining and
# against ASR pretraining, and the fix against the paper's weighting), tested as one family; every
# other pair is exploratory.
PLANNED_PAIRS: list[tuple[str, str]] = [
    ("asr", "none"),
    ("contr-cos-emb", "none"),
    ("contr-cos-all", "none"),
    ("contr-cos-all-fixed", "none"),
    ("contr-cos-emb", "asr"),
    ("contr-cos-all", "asr"),
    ("contr-cos-all-fixed", "asr"),
    ("contr-cos-all-fixed", "contr-cos-all"),
]


# --------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """How much work each phase does; `smoke` is for CI, `default` is the README's study."""

    corpus_size: str  # llava.demo.corpus --size
    base_budget: str  # llava.demo.base_models.build --budget (when no shipped models exist)
    pretrain_steps: int
    finetune_steps: int
    batch_size: int  # stage 1 (per device; the demo runs one process per training run)
    learning_rate: float  # stage 1
    finetune_learning_rate: float  # stage 2
    eval_limit: int  # test utterances per task (generation)
    diag_limit: int  # test utterances for the alignment diagnostics
    nll_limit: int  # dev rows per task for the teacher-forced NLL
    curve_points: int  # stage-2 checkpoints measured for the learning curve
    full_data_steps: int  # stage-2 steps of the 100 % run (0: no such run)
    max_new_tokens: int = 48
    finetune_batch_size: int = 0  # stage 2 (and the 100 % run); 0 = batch_size
    # LoRA on the LLM in stage 2 (and the 100 % run): {} trains the projector alone (the paper
    # scripts' default); else `--lora_<name>` settings, e.g. {"r": 32, "alpha": 64, "target_modules":
    # "all-linear"}.
    finetune_lora: dict = field(default_factory=dict)
    fill_cache: bool = True  # encode the corpus into the feature cache up front, one process per core
    seeds: int = 3  # training seeds per variant unless --seeds says otherwise
    variants: tuple[str, ...] = ()  # variants run unless --variants says otherwise (empty: all)
    # --projector_output_norm of every variant, both stages ("none": the paper's projector).
    output_norm: str = "none"
    projector_type: str = "qformer"  # --mm_speech_projector_type (qformer | mlp | linear)
    # Settings of that projector: Q-Former fields (hidden_size, num_heads, intermediate_size, num_layers,
    # num_queries, window_seconds, window_positions) or, for mlp / linear, {"stack": k[, "context": c]}.
    projector: dict = field(
        default_factory=lambda: {
            "hidden_size": 128,
            "num_heads": 4,
            "intermediate_size": 512,
            "num_layers": 2,
        }
    )

    def stage_batch_size(self, stage: int) -> int:
        """The per-device batch size of stage 1 or 2."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        return (self.finetune_batch_size or self.batch_size) if stage == 2 else self.batch_size

    def finetune_lora_flags(self) -> list[str]:
        """The stage-2 training flags of `finetune_lora` (none when it is empty)."""
        if not self.finetune_lora:
            return []
        from llava.train.arguments import LoraArgs  # the training flags' own list (imports transformers)

        known = {f.name for f in fields(LoraArgs)} - {"enable"}
        unknown = sorted(set(self.finetune_lora) - known)
        if unknown:
            raise ValueError(f"Budget.finetune_lora: {unknown} are not LoRA settings; known: {sorted(known)}")
        return ["--lora_enable", "True"] + [
            x for k, v in self.finetune_lora.items() for x in (f"--lora_{k}", str(v))
        ]

    def projector_options(self) -> dict:
        """The projector settings (for in-process model building with `projector_type`)."""
        extra = {} if self.output_norm == "none" else {"output_norm": self.output_norm}
        return {**self.projector, **extra}

    def projector_flags(self) -> list[str]:
        """The training flags that build this projector."""
        names = PROJECTOR_FLAGS.get(self.projector_type)
        if names is None:
            raise ValueError(
                f"Budget.projector_type {self.projector_type!r}; known: {sorted(PROJECTOR_FLAGS)}"
            )
        unknown = sorted(set(self.projector) - set(names))
        if unknown:
            raise ValueError(f"Budget.projector: {unknown} are not {self.projector_type} settings; known: {sorted(names)}")  # fmt: skip
        flags = ["--mm_speech_projector_type", self.projector_type]
        flags += [x for k, v in self.projector.items() for x in (names[k], str(v))]
        if self.output_norm != "none":
            flags += ["--projector_output_norm", self.output_norm]
        return flags


_STACK_FLAGS = {
    "stack": "--mm_speech_stack",
    "context": "--mm_speech_context",
    "dropout": "--mm_speech_dropout",
}
PROJECTOR_FLAGS: dict[str, dict[str, str]] = {
    "qformer": {
        "hidden_size": "--mm_qformer_hidden_size",
        "num_heads": "--mm_qformer_num_heads",
        "intermediate_size": "--mm_qformer_intermediate_size",
        "num_layers": "--mm_qformer_num_hidden_layers",
        "num_queries": "--mm_qformer_num_query_token",
        "window_seconds": "--mm_qformer_window_seconds",
        "window_positions": "--mm_qformer_window_positions",
    },
    "mlp": _STACK_FLAGS,
    "linear": _STACK_FLAGS,
}


# The default run: every variant but the exploratory ones.
DEFAULT_VARIANTS = tuple(key for key, v in VARIANTS.items() if not v.exploratory)

BUDGETS = {
    "smoke": Budget(
        "tiny", "smoke", pretrain_steps=4, finetune_steps=4, batch_size=4, learning_rate=1e-3,
        finetune_learning_rate=1e-3, eval_limit=4, diag_limit=12, nll_limit=4, curve_points=2,
        full_data_steps=4, max_new_tokens=8, seeds=2, variants=("none", "asr", "contr-cos-all-fixed"),
        fill_cache=False, output_norm="rms_match", projector_type="mlp", projector={"stack": 2},
        finetune_lora={"r": 4, "alpha": 8, "target_modules": "all-linear"},
    ),
    # Sized by measurement: 3 seeds of all variants plus the 100 % run took 1,316 s wall on 2 cores at
    # batch 8, 400 / 300 steps, 3 stacked frames (stage 1 801 s, stage 2 1,114 s, evaluation 386 s
    # summed over the two worker processes; each run ~10 s of start-up).
    # The projector: an `mlp` over 2 stacked frames (25 positions per second, about two per spoken
    # letter; the shipped LLM's spelled phase taught it to read letters, some of them doubled),
    # outputs at the token embeddings' norm. Projector probe (ASR dev NLL, lr 3e-3, batch 8): 3 frames
    # 1.41 / 0.98 after 400 / 1,200 steps, 2 frames 1.30 / 0.89; batch 16: 0.91 after 400, batch 32
    # (lr 6e-3) 0.68; lr 6e-3 at batch 8: 1.14 after 400 (equal steps; at equal samples batch 8 wins,
    # below). One-seed pilots of the asr variant (ASR WER after stage 2): batch 8
    # at 400 / 300 steps with 3 frames 51.4, with 2 frames and lr 6e-3 40.5; batch 16 with 2 frames
    # 32.7; batch 16 at 300 / 200 steps 45.9 and 30.8 (seeds 0, 1).
    # Stage 1 is what lowers the WER, and stage 2 on 10 % of the data gives back part of what it
    # learned, so the budget moves steps from stage 2 to stage 1 at about the same wall time (a 100-step
    # stage 2 costs about as much less as 200 more stage-1 steps cost over three seeds). asr pilots
    # (seeds 0 / 1, ASR WER): 400 / 200 steps at lr 3e-3 39.6 (seed 0); lr 6e-3 31.3 (seed 0), lr 1.2e-2
    # 40.9; lr 6e-3 at 600 / 100 steps 32.9 / 23.8, at 800 / 100 27.9 / 22.9. The whole default study at
    # 800 / 100 (with the shared-prefix reuse): asr WER 28.8 over 3 seeds (29.2 / 24.4 / 32.6; 29.0 at
    # 600), every other variant within its seed spread of the 600-step run, 2,066 s wall: 200 more steps
    # buy nothing the table resolves and break the 30-minute budget.
    # All 200 test utterances of ASR and ST (and all 80 SQA items) are scored: on the first 48 the
    # asr variant's seeds read 32.4 / 23.0 / 29.9 WER, on 200 32.3 / 29.0 / 30.4 (the same
    # checkpoints): 48 utterances added more spread than the seeds. Greedy decoding of the rest
    # costs a few seconds per run.
    # Stage 1 runs 1,200 steps at batch 8 rather than 600 at batch 16: the same utterances seen, about
    # the same wall time (a step costs about half), and a better projector from the extra optimizer
    # steps. Stage-1 asr projectors alone (ASR WER on all 200 test items, seeds 0 / 1; ASR dev NLL):
    # batch 16 x 600 29.0 / 26.7 (0.724 / 0.655); batch 8 x 1,200 24.8 / 24.6 (0.675 / 0.660), at lr
    # 4e-3 26.5 / 23.7; batch 32 x 300 29.9 (lr 6e-3), 32.2 (1.2e-2); batch 4 x 2,400 (lr 4e-3) 25.7 but
    # 1.3x the time. After stage 2: 27.0 / 27.0 WER, 35.7 / 38.7 BLEU (batch 16 x 600 in the previous
    # table: 32.8 / 29.2). Not the number of distinct utterances: half of them gives 32.2 / 30.2, twice
    # as many (2,000 more synthesised sentences as an ASR-only set) 27.9 / 28.4 at batch 16 x 600.
    # Stage 2 keeps batch 16.
    # Stage 2 trains LoRA adapters (r 32, alpha 64, every linear layer of the LLM) beside the projector:
    # on the stage-1 projectors of the projector-only table (3 seeds) asr went from 27.6 to 26.2 WER and
    # 38.0 to 41.1 BLEU, the contrastive variants from 71-74 to 49-50 WER, every variant's mean dev NLL
    # 0.15-0.55 nats lower, for about 3 minutes more wall time (the projector-only table:
    # docs/demo/projector_only/results.md).
    # The learning curve is measured at steps 0, 50 and 100: each point costs about 3 s of dev NLL per
    # run (two thirds of it the long SQA passages), and at 25 / 50 / 75 / 100 the curves of the run
    # at 833a0e6 showed most of the change by step 25 and the rest of it monotone.
    "default": Budget(
        "small", "small", pretrain_steps=1200, finetune_steps=100, batch_size=8, learning_rate=6e-3,
        finetune_learning_rate=3e-3, eval_limit=200, diag_limit=96, nll_limit=80, curve_points=2,
        full_data_steps=500, finetune_batch_size=16, seeds=3, output_norm="rms_match", projector_type="mlp",
        projector={"stack": 2}, variants=DEFAULT_VARIANTS,
        finetune_lora={"r": 32, "alpha": 64, "target_modules": "all-linear"},
    ),
}  # fmt: skip
