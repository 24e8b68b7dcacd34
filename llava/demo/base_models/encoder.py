"""A tiny HuBERT-architecture speech encoder trained with CTC on characters.

The result is laid out like `facebook/hubert-large-ls960-ft`: a `HubertForCTC` checkpoint plus a
`Wav2Vec2Processor` (character CTC tokenizer + feature extractor), so

- `AutoModel.from_pretrained(dir)` gives the `HubertModel` the pipeline uses (CTC head ignored),
- `AutoModelForCTC.from_pretrained(dir)` gives the CTC model (greedy ASR, forced alignment),
- `AutoFeatureExtractor` / `AutoProcessor` load the matching preprocessing.

The feature encoder keeps HuBERT's kernels and strides (total stride 320, 50 frames per second at
16 kHz), only narrower, so frame counts are exactly those of the real model.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer
import numpy as np
import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
)

from llava.demo.base_models.schedule import lr_factor

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
# Same special symbols and order as the LibriSpeech CTC checkpoints: blank (= <pad>) is id 0.
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]

# One utterance: 16 kHz mono float32 waveform and its transcript.
Utterance = tuple[np.ndarray, str]


def default_encoder_config(**overrides) -> HubertConfig:
    """The tiny encoder architecture (about 3.5 M parameters); `overrides` replace any field."""
    cfg = dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        # Three conv layers instead of seven, total stride 320 (50 frames/s at 16 kHz) and a
        # 25 ms receptive field like HuBERT's; the high-rate early layers dominate CPU time.
        conv_dim=(64, 128, 256),
        conv_kernel=(20, 8, 4),
        conv_stride=(10, 8, 4),
        conv_bias=True,
        # Layer-norm feature encoder + pre-LN transformer (as HuBERT-large): padding-invariant
        # with an attention mask, so batched and single-utterance features agree.
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,  # DDP on CPU fails on parameters skipped by layer drop
        mask_time_prob=0.0,  # SpecAugment slows the escape from CTC's all-blank plateau
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        vocab_size=len(CTC_VOCAB),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg.update(overrides)
    return HubertConfig(**cfg)


@dataclass
class EncoderTrainArgs:
    """Optimisation settings of `train_tiny_hubert_ctc`."""

    time_budget_s: float | None = 300.0  # wall-clock training budget; the LR schedule follows it
    max_steps: int = 100_000  # step cap; whichever of this and the time budget ends first
    batch_seconds: float = 8.0  # padded audio per batch; small batches = more updates per second
    max_utterance_s: float = 20.0  # longer utterances are skipped (counted in the report)
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_frac: float = 0.05  # linear warm-up over this fraction of the run
    decay_frac: float = 0.4  # constant LR until the last `decay_frac` of the run, then cosine to 0
    curriculum_epochs: int = 1  # epochs that visit batches shortest first (CTC aligns short clips first)
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    bf16: bool = False  # bf16 autocast of the forward pass (CTC loss in fp32); slower than fp32 for
    # these small matrices on CPUs without AMX
    seed: int = 42
    max_dev: int | None = 300  # dev utterances scored for CER (None: all)
    log_every: int = 25  # steps between progress log lines
    eval_every: int = 0  # steps between dev CER log lines on `eval_dev` utterances (0: only at the end)
    eval_dev: int = 100


# ----------------------------------------------------------------------------------- text side
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _spell_number(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _spell_number(rest))
    if n < 1_000_000:
        rest = n % 1000
        return _spell_number(n // 1000) + " thousand" + ("" if rest == 0 else " " + _spell_number(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize_transcript(text: str) -> str:
    """Map a transcript onto the CTC alphabet: upper case A-Z, apostrophe, single spaces.

    Accents are stripped (é -> E, ß -> SS), integers are spelled out (as the synthesiser reads
    them), every other symbol becomes a word break.
    """
    text = re.sub(r"\d+", lambda m: " " + _spell_number(int(m.group())) + " ", text)
    text = text.replace("ß", "ss").replace("’", "'")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).upper()
    text = re.sub(r"[^A-Z']+", " ", text)
    text = re.sub(r"(?<![A-Z])'|'(?![A-Z])", " ", text)  # quotes, not contractions
    return " ".join(text.split())


def build_ctc_processor() -> Wav2Vec2Processor:
    """The character CTC tokenizer + waveform feature extractor saved next to the encoder."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(CTC_VOCAB)}))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file),
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            word_delimiter_token="|",
            do_lower_case=False,
        )
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


# ----------------------------------------------------------------------------------- batching
@dataclass
class _Item:
    wave: np.ndarray  # [S] float32
    text: str  # normalised transcript
    labels: list[int]


def _prepare(
    data: Sequence[Utterance], processor: Wav2Vec2Processor, max_samples: int, frames_of, counts: dict
) -> list[_Item]:
    items = []
    for wave, text in data:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        norm = normalize_transcript(text)
        if not norm or wave.size == 0 or not np.isfinite(wave).all():
            counts["empty_or_invalid"] = counts.get("empty_or_invalid", 0) + 1
            continue
        if wave.size > max_samples:
            counts["too_long"] = counts.get("too_long", 0) + 1
            continue
        labels = processor.tokenizer(norm).input_ids
        # CTC needs a frame per label plus one between repeated labels.
        needed = len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))
        if frames_of(wave.size) < needed:
            counts["too_fast"] = counts.get("too_fast", 0) + 1
            continue
        items.append(_Item(wave, norm, labels))
    return items


def _duration_batches(
    lengths: list[int], max_samples: int, rng: np.random.Generator | None
) -> list[list[int]]:
    """Index batches of similar length whose padded size stays under `max_samples`."""
    order = np.argsort(lengths, kind="stable")
    if rng is not None:  # shuffle within length buckets so epochs differ
        order = order[np.argsort(np.asarray(lengths)[order] // 8000 + rng.random(len(order)), kind="stable")]
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > max_samples:
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(int(i))
        cur_max = new_max
    if cur:
        batches.append(cur)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _collate(items: list[_Item], processor: Wav2Vec2Processor, with_labels: bool = True) -> dict:
    feats = processor.feature_extractor(
        [it.wave for it in items], sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt"
    )
    batch = {"input_values": feats.input_values, "attention_mask": feats.attention_mask}
    if with_labels:
        width = max(len(it.labels) for it in items)
        labels = torch.full((len(items), width), -100, dtype=torch.long)  # [B, U]
        for row, it in enumerate(items):
            labels[row, : len(it.labels)] = torch.tensor(it.labels)
        batch["labels"] = labels
    return batch


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_ctc(
    model: HubertForCTC,
    processor: Wav2Vec2Processor,
    data: Sequence[Utterance],
    batch_seconds: float = 64.0,
    bf16: bool = False,
) -> dict:
    """Greedy CTC decoding of `data`; returns corpus CER and WER (jiwer) and a few examples."""
    counts: dict[str, int] = {}
    items = _prepare(data, processor, 10**12, lambda n: 10**12, counts)
    if not items:
        raise ValueError("no usable dev utterances to score")
    was_training = model.training
    model.eval()
    hyps: list[str] = [""] * len(items)
    for idx in _duration_batches([it.wave.size for it in items], int(batch_seconds * SAMPLING_RATE), None):
        batch = _collate([items[i] for i in idx], processor, with_labels=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(**batch).logits  # [B, T, V]
        frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
        pred = logits.float().argmax(-1)
        for row, i in enumerate(idx):
            # Padded frames would decode to junk: cut each row to its valid length.
            hyps[i] = processor.decode(pred[row, : int(frames[row])].tolist())
    model.train(was_training)
    refs = [it.text for it in items]
    hyps = [" ".join(h.split()) for h in hyps]
    return {
        "cer": float(jiwer.cer(refs, hyps)),
        "wer": float(jiwer.wer(refs, hyps)),
        "n": len(items),
        "skipped": counts,
        "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]],
    }


# ----------------------------------------------------------------------------------- training
def train_tiny_hubert_ctc(
    train: Sequence[Utterance],
    dev: Sequence[Utterance],
    out_dir: str | Path,
    config: dict | None = None,
    args: EncoderTrainArgs | None = None,
) -> dict:
    """Train a tiny `HubertForCTC` on character CTC and save it with its processor in `out_dir`.

    `train` / `dev` are `(waveform, transcript)` pairs, waveforms 16 kHz mono float32. Transcripts are
    normalised with `normalize_transcript`; utterances that are empty, longer than
    `args.max_utterance_s` or too short for their transcript are skipped and counted. `config`
    overrides fields of `default_encoder_config()`. Returns a report (parameters, steps, time, dev
    CER/WER), also written to `out_dir/train_report.json`.
    """
    args = args or EncoderTrainArgs()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    processor = build_ctc_processor()
    model_config = default_encoder_config(**(config or {}))
    model = HubertForCTC(model_config)
    model.train()

    def frames_of(n: int) -> int:
        return int(model._get_feat_extract_output_lengths(torch.tensor(n)))

    counts: dict[str, int] = {}
    items = _prepare(train, processor, int(args.max_utterance_s * SAMPLING_RATE), frames_of, counts)
    if not items:
        raise ValueError(f"no usable training utterances (skipped: {counts})")
    if counts:
        logger.warning("encoder training: skipped %s of %d utterances", counts, len(train))
    lengths = [it.wave.size for it in items]
    max_batch = int(args.batch_seconds * SAMPLING_RATE)  # an utterance longer than this is a batch alone

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "norm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    start = time.monotonic()
    step, epoch, audio_s, losses = 0, 0, 0.0, []
    curve: list[dict] = []  # periodic dev CER
    progress = 0.0
    while progress < 1.0:
        batches = _duration_batches(lengths, max_batch, rng)
        if epoch < args.curriculum_epochs:
            batches.sort(key=lambda b: max(lengths[i] for i in b))
        for idx in batches:
            elapsed = time.monotonic() - start
            progress = step / args.max_steps
            if args.time_budget_s:
                progress = max(progress, elapsed / args.time_budget_s)
            if progress >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(progress, args.warmup_frac, args.decay_frac)
            batch = _collate([items[i] for i in idx], processor)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            audio_s += sum(lengths[i] for i in idx) / SAMPLING_RATE
            losses.append(loss.item())
            if step % args.log_every == 0:
                logger.info(
                    "encoder step %d epoch %d loss %.3f lr %.2e %.0fs",
                    step,
                    epoch,
                    float(np.mean(losses[-args.log_every :])),
                    optimizer.param_groups[0]["lr"],
                    elapsed,
                )
            if args.eval_every and step % args.eval_every == 0 and dev:
                partial = evaluate_ctc(model, processor, list(dev)[: args.eval_dev], bf16=args.bf16)
                curve.append({"step": step, "dev_cer": partial["cer"], "time_s": round(elapsed, 1)})
                logger.info(
                    "encoder step %d dev CER %.4f (%d utterances)", step, partial["cer"], partial["n"]
                )
        epoch += 1
    train_time = time.monotonic() - start

    dev_data = list(dev)[: args.max_dev] if args.max_dev else list(dev)
    scores = evaluate_ctc(model, processor, dev_data, bf16=args.bf16) if dev_data else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    # Real checkpoints (facebook/hubert-large-ls960-ft) carry preprocessor_config.json, which every
    # transformers version's AutoFeatureExtractor reads; processor_config.json alone is 5.x only.
    processor.feature_extractor.save_pretrained(str(out_dir))
    report = {
        "params": sum(p.numel() for p in model.parameters()),
        "params_encoder": sum(p.numel() for p in model.hubert.parameters()),
        "steps": step,
        "epochs": round(audio_s * SAMPLING_RATE / sum(lengths), 2),
        "train_audio_hours": round(sum(lengths) / SAMPLING_RATE / 3600, 3),
        "audio_seen_hours": round(audio_s / 3600, 3),
        "train_time_s": round(train_time, 1),
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": float(np.mean(losses[-args.log_every :])) if losses else None,
        "train_skipped": counts,
        "dev_cer": scores.get("cer"),
        "dev_wer": scores.get("wer"),
        "dev_n": scores.get("n"),
        "dev_examples": scores.get("examples"),
        "dev_cer_curve": curve,
        "args": asdict(args),
    }
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report
