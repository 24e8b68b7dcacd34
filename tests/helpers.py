"""Test helpers shared across test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def speech_batch(
    model, tokenizer, lengths: list[int], texts: list[str] | None = None, seed: int | None = None
) -> dict[str, torch.Tensor]:
    """A chat-like training batch: prompt + a run of audio tokens (+ " ok") per utterance, right
    padded, one audio segment of `lengths[i]` random samples per row; labels on the text after the
    audio. With `texts`, also the transcript side (text_input_ids / text_attention_mask). The
    waveforms come from torch's global generator, or with `seed` from their own (the same batch
    however many draws happened before)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    audio_id = model.config.audio_token_id
    rows = []
    for n in lengths:
        k = model.num_audio_tokens(int(n))
        rows.append(tokenizer("say:")["input_ids"] + [audio_id] * k + tokenizer(" ok")["input_ids"])
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n, generator=gen) * 0.1
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == audio_id, -100)
    batch = dict(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        audio_values=audio,
        audio_lengths=torch.tensor(lengths),
    )
    if texts is not None:
        text_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, text_ids))
        batch["text_input_ids"] = torch.tensor(
            [r + [tokenizer.pad_token_id] * (width - len(r)) for r in text_ids]
        )
        batch["text_attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in text_ids])
    return batch


def nan_wav(seconds: float, sr: int = 16000) -> dict:
    """A parquet audio cell: a float WAV whose header is fine but whose samples are NaN, so only
    decoding (in the loader, not at load) finds out."""
    wave = np.full(int(seconds * sr), np.nan, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    return {"bytes": buf.getvalue(), "path": None}


# Transcripts of `contrastive_batch`'s utterances, in order.
TRANSCRIPTS = ["the quick brown fox", "a small cat", "one two three four five"]


def contrastive_batch(model, tokenizer, lengths=(12000, 9000, 7000)) -> dict[str, torch.Tensor]:
    """`speech_batch` with the transcript side: utterance i transcribes `TRANSCRIPTS[i]`."""
    return speech_batch(model, tokenizer, list(lengths), texts=TRANSCRIPTS[: len(lengths)])


def objective_from_flags(model, **flags):
    """The run's `ObjectiveSet` for `model` from loss flags (and `audio_nwp`), as training builds it."""
    from llava.train.arguments import DataArguments, LossArguments
    from llava.train.objectives import build_objective

    data = DataArguments(audio_nwp=flags.pop("audio_nwp", False))
    return build_objective(LossArguments(**flags), data, model.num_llm_layers)


def weighted_loss(objective, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ weight · term, the terms) of one batch, as the trainer combines them."""
    terms = objective(model, batch)
    return sum(objective.weights[k] * v for k, v in terms.items()), terms


def asr_sample(
    sample_id: str, audio: np.ndarray, text: str, segments=None, prompt: str = "<audio>\nTranscribe."
):
    """An ASR `Sample` of `audio` transcribed as `text` (target and transcript), optionally interleaved."""
    from llava.dataset.sample import Sample

    return Sample(
        id=sample_id, task="ASR", audio=audio, prompt=prompt, target=text, transcript=text, segments=segments
    )


def write_asr_config(root: Path, rows: list[dict], weight: float = 1.0) -> Path:
    """`rows` (parquet records: audio, transcription, duration, ...) as the en-de train partition of an
    ASR source under `root`, and a data config naming it with mixing `weight`; returns the config.
    Row k gets the id `MuSTC_NWP.ASR.en-de:en-de_train_processed:k`."""
    from llava.dataset.importers import write_parquet

    write_parquet(rows, root / "asr" / "en-de_train_processed.parquet")
    cfg = root / "asr.yml"
    cfg.write_text(
        f"DATA:\n  - MuSTC_NWP:\n      datapath: {root / 'asr'}\n      task: ASR\n      languages: [en-de]\n"
        f"      partitions: {{train: {{destination: train, weight: {weight}}}}}\n"
    )
    return cfg


# Training flags for a small Q-Former projector (hidden 32, 2 layers): end-to-end runs of the entry points.
TINY_PROJECTOR_FLAGS = [
    "--mm_qformer_hidden_size", "32", "--mm_qformer_num_heads", "2",
    "--mm_qformer_intermediate_size", "64", "--mm_qformer_num_hidden_layers", "2",
]  # fmt: skip


def train_argv(base_dirs, data_config, out, *extra: str) -> list[str]:
    """Command line of `llava.train.train` for a short CPU run: the tiny base models `base_dirs`
    (encoder, LLM), `data_config`, output in `out`, batches of 4, logging every step, no workers, a
    small projector; `extra` flags last (they win)."""
    enc, llm = base_dirs
    return [
        "--model_name_or_path", str(llm), "--audio_encoder", str(enc), "--data_config_path", str(data_config),
        "--output_dir", str(out), "--per_device_train_batch_size", "4",
        "--report_to", "none", "--logging_steps", "1", "--dataloader_num_workers", "0",
        "--disable_tqdm", "True", *TINY_PROJECTOR_FLAGS, *extra,
    ]  # fmt: skip
