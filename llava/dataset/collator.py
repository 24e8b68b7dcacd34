"""Samples -> padded Batch (docs/architecture.md): chat-templated or mixed speech-text sequences.

Items are `llava.dataset.sample.Sample`s (a record with the same field names is converted and
validated with `Sample.from_mapping`).

chat mode: the user turn is the sample's prompt (with one `<audio>`), the assistant turn its target,
rendered with the tokenizer's own chat template. Labels are IGNORE_INDEX everywhere except the target
tokens and the end-of-turn token that closes them; whatever the template puts after that token is cut.
Each `<audio>` becomes a run of `num_audio_tokens(len(audio))` audio-token ids.

mixed mode: BOS + the sample's `segments` (text spans and audio runs, no chat template) + EOS; labels
on the text tokens and the EOS only.

inference: the prompt rendered with `add_generation_prompt=True`, no labels, left padding by default
(for batched generation); the batch also carries the non-tensor keys `ids` (sample ids) and `meta`
(per row: id, task, prompt, target, references, transcript, source_lang, target_lang) for writing
predictions.

Bad samples: None entries (audio that failed to decode) and `SkippedRow` markers (the same, with the
row's id and reason: `SpeechDataset.sample_or_skip`) are dropped; so are sequences whose prompt and
audio alone do not fit in `max_length` (with `on_overflow="drop"`; `"error"` raises instead). Longer
sequences are truncated in the text only: in chat mode the target's tail is cut; in mixed mode the cut
moves back to before an audio run it would split, and the audio segments past the cut are removed.
Every batch carries `"skipped": {reason: count}` (possibly empty; the rows dropped from this batch)
and `"skipped_rows"`: a `SkippedRow` per dropped row whose id is known, so a consumer that sees the
same row in several batches (epochs, mixing weights) can count it once. Both are non-tensor keys the
trainer pops. If every sample of a batch is dropped, the batch has zero rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from llava.constants import AUDIO_TOKEN, IGNORE_INDEX
from llava.dataset.sample import Sample
from llava.dataset.skips import BAD_AUDIO, EXCEEDS_MAX_LENGTH, SkippedRow
from llava.tokenization import end_of_turn_token

MODES = ("chat", "mixed")
# Distinct prompts whose token ids a collator keeps (a task's fixed instructions; not every question).
PROMPT_MEMO_SIZE = 1024
# Rendered chats (prompt + target) and transcripts a collator keeps: a training sample comes back every
# epoch and tokenizes the same each time (a stage-1 run of the demo sees each sample ~5 times).
# Bounded so a corpus of millions does not grow the memo past ~100 MB; samples beyond it re-render.
SAMPLE_MEMO_SIZE = 32768
# Sample fields an inference batch carries along (non-tensor `meta`) for writing and scoring predictions.
_META_KEYS = (
    "id",
    "task",
    "prompt",
    "target",
    "references",
    "transcript",
    "source_lang",
    "target_lang",
)


class _Overflow(Exception):
    """A sequence that cannot be truncated to max_length without cutting into its audio."""


def _remembered(memo: dict, key: Any, limit: int, compute: Callable[[], Any]) -> Any:
    """`memo[key]`, computed and kept on first use while the memo holds fewer than `limit` entries.
    Callers copy what they return, so a kept value is never changed."""
    value = memo.get(key)
    if value is None:
        value = compute()
        if len(memo) < limit:
            memo[key] = value
    return value


class SpeechCollator:
    """Builds the Batch of docs/architecture.md from a list of Samples (None entries are dropped)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_audio_tokens: Callable[[int], int],
        mode: str = "chat",
        with_transcript: bool = False,
        max_length: int = 2048,
        *,
        inference: bool = False,
        padding_side: str | None = None,
        system_prompt: str | None = None,
        on_overflow: str = "drop",
        eot_token: str | None = None,
        pad_to_multiple_of: int | None = None,
        transcript_special_tokens: bool = False,
    ):
        """
        Args:
            tokenizer: HF tokenizer with a chat template (chat mode) and `<audio>` registered
                (`llava.tokenization.add_audio_token`).
            num_audio_tokens: audio samples -> LLM positions (`SpeechLlavaForCausalLM.num_audio_tokens`).
            mode: "chat" (prompt/target with the chat template) or "mixed" (interleaved segments).
            with_transcript: add `text_input_ids` / `text_attention_mask` (transcript tokens only).
            max_length: longest sequence in tokens (audio runs included).
            inference: prompt only (generation prompt appended), no labels; chat mode only.
            padding_side: "right" or "left"; default right for training, left for inference.
            system_prompt: optional system turn before the user turn.
            on_overflow: "drop" (count as skipped) or "error" for sequences whose prompt + audio
                alone exceed max_length.
            eot_token: the end-of-turn token; default `llava.tokenization.end_of_turn_token` (the first
                of END_OF_TURN_TOKENS in the vocabulary, else the EOS token).
            pad_to_multiple_of: round the padded length up (e.g. 8 for tensor cores).
            transcript_special_tokens: the transcript side as [BOS] + transcript + EOS, the tokens
                that open and close a mixed sequence (the original's contrastive + mixed text side).
        """
        if mode not in MODES:
            raise ValueError(f"unknown collator mode {mode!r}; known modes: {list(MODES)}")
        if on_overflow not in ("drop", "error"):
            raise ValueError(f"on_overflow must be 'drop' or 'error', got {on_overflow!r}")
        if inference and mode != "chat":
            raise ValueError("inference batches are only built in chat mode")
        padding_side = padding_side or ("left" if inference else "right")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        vocab = tokenizer.get_vocab()
        if AUDIO_TOKEN not in vocab:
            raise ValueError(
                f"the tokenizer has no {AUDIO_TOKEN} token; register it with llava.tokenization.add_audio_token"
            )
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (llava.tokenization.ensure_pad_token)")
        if mode == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat mode needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.num_audio_tokens = num_audio_tokens
        self.mode = mode
        self.with_transcript = with_transcript
        self.max_length = max_length
        self.inference = inference
        self.padding_side = padding_side
        self.system_prompt = system_prompt
        self.on_overflow = on_overflow
        self.pad_to_multiple_of = pad_to_multiple_of
        self.transcript_special_tokens = transcript_special_tokens
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.pad_token_id = tokenizer.pad_token_id
        if eot_token is None:
            eot_token = end_of_turn_token(tokenizer)
        if eot_token is None or eot_token not in vocab:
            raise ValueError(f"end-of-turn token {eot_token!r} is not in the vocabulary")
        self.eot_token_id = vocab[eot_token]
        # Token ids of each (system turn, user turn) prompt seen: a task's prompts repeat across its
        # samples, and rendering the chat template is most of the per-sample cost of a chat batch.
        self._prompt_ids: dict[tuple[str | None, str], list[int]] = {}
        self._chat_ids: dict[tuple[str | None, str, str], tuple[list[int], list[int] | None]] = {}
        self._transcript_memo: dict[tuple[bool, int, str], list[int]] = {}

    # ------------------------------------------------------------------------- tokenization
    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _transcript_ids(self, transcript: str) -> list[int]:
        """The contrastive text side: transcript tokens, optionally between BOS and EOS."""
        key = (self.transcript_special_tokens, self.max_length, transcript)
        ids = _remembered(
            self._transcript_memo, key, SAMPLE_MEMO_SIZE, lambda: self._render_transcript(transcript)
        )
        return list(ids)

    def _render_transcript(self, transcript: str) -> list[int]:
        if not self.transcript_special_tokens:
            return self._tokenize(transcript)[: self.max_length]
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return bos + self._tokenize(transcript)[: self.max_length - len(bos) - len(eos)] + eos

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": prompt}]

    def _chat(self, sample: Sample) -> tuple[list[int], list[int] | None]:
        """Token ids (one id per `<audio>`, not yet expanded) and labels of one chat sample."""
        if self.inference:
            return self._render_chat(sample)
        key = (self.system_prompt, sample.prompt, sample.target)
        ids, labels = _remembered(self._chat_ids, key, SAMPLE_MEMO_SIZE, lambda: self._render_chat(sample))
        return list(ids), list(labels or ())

    def _render_chat(self, sample: Sample) -> tuple[list[int], list[int] | None]:
        messages = self._messages(sample.prompt)
        # Bounded: per-sample prompts (SQA questions) re-render once the memo is full.
        prefix_ids = _remembered(
            self._prompt_ids,
            (self.system_prompt, sample.prompt),
            PROMPT_MEMO_SIZE,
            lambda: self._tokenize(
                self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ),
        )
        if self.inference:
            return list(prefix_ids), None
        full = self.tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": sample.target}], tokenize=False
        )
        full_ids = self._tokenize(full)
        if full_ids[: len(prefix_ids)] != prefix_ids:
            raise ValueError(
                f"sample {sample.id}: the tokenized prompt (add_generation_prompt=True) is not a prefix of "
                "the tokenized prompt + answer; labels cannot be placed (check the chat template)"
            )
        completion = full_ids[len(prefix_ids) :]
        try:
            end = completion.index(self.eot_token_id) + 1
        except ValueError:
            raise ValueError(
                f"sample {sample.id}: no end-of-turn token (id {self.eot_token_id}) after the answer"
            ) from None
        completion = completion[:end]  # nothing after the end of turn is trained on or kept
        return prefix_ids + completion, [IGNORE_INDEX] * len(prefix_ids) + completion

    def _expand(
        self, ids: list[int], labels: list[int] | None, audios: list[np.ndarray], sample_id: Any
    ) -> tuple[list[int], list[int] | None, list[int]]:
        """Replace the i-th `<audio>` id by n_i audio ids; returns ids, labels and run start positions."""
        slots = [p for p, t in enumerate(ids) if t == self.audio_token_id]
        if len(slots) != len(audios):
            raise ValueError(
                f"sample {sample_id}: {len(slots)} {AUDIO_TOKEN} placeholder(s) in the tokenized prompt but "
                f"{len(audios)} audio segment(s)"
            )
        out_ids: list[int] = []
        out_labels: list[int] | None = [] if labels is not None else None
        starts: list[int] = []
        prev = 0
        for slot, audio in zip(slots, audios):
            out_ids += ids[prev:slot]
            if out_labels is not None:
                out_labels += labels[prev:slot]
            n = int(self.num_audio_tokens(len(audio)))
            starts.append(len(out_ids))
            out_ids += [self.audio_token_id] * n
            if out_labels is not None:
                out_labels += [IGNORE_INDEX] * n
            prev = slot + 1
        out_ids += ids[prev:]
        if out_labels is not None:
            out_labels += labels[prev:]
        return out_ids, out_labels, starts

    def _encode_chat(self, sample: Sample) -> tuple[list[int], list[int] | None, list[np.ndarray]]:
        ids, labels = self._chat(sample)
        audios = [sample.audio]
        ids, labels, starts = self._expand(ids, labels, audios, sample.id)
        if len(ids) > self.max_length:
            # Everything up to the first target token must fit: the prompt and its audio are never cut.
            prompt_len = (
                len(ids) if labels is None else next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
            )
            if prompt_len >= self.max_length or labels is None:
                raise _Overflow(
                    f"sample {sample.id}: prompt + audio take {prompt_len} tokens, max_length is {self.max_length}"
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels, audios

    def _encode_mixed(self, sample: Sample) -> tuple[list[int], list[int], list[np.ndarray]]:
        segments = sample.segments
        if not segments:
            raise ValueError(
                f"sample {sample.id}: mixed mode needs `segments` (see llava.dataset.interleave)"
            )
        tok = self.tokenizer
        ids: list[int] = [tok.bos_token_id] if tok.bos_token_id is not None else []
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        audios: list[np.ndarray] = []
        runs: list[tuple[int, int]] = []  # [start, end) of each audio run
        for j, (kind, value) in enumerate(segments):
            if kind == "text":
                # Words after a speech span (or another span) are mid-sentence: keep their leading space.
                piece = self._tokenize(value if j == 0 else " " + value)
                ids += piece
                labels += piece
            elif kind == "audio":
                n = int(self.num_audio_tokens(len(value)))
                runs.append((len(ids), len(ids) + n))
                ids += [self.audio_token_id] * n
                labels += [IGNORE_INDEX] * n
                audios.append(value)
            else:
                raise ValueError(f"sample {sample.id}: unknown segment kind {kind!r}")
        eos = tok.eos_token_id
        if eos is not None:
            ids.append(eos)
            labels.append(eos)
        if len(ids) > self.max_length:
            cut = self.max_length
            for start, end in runs:
                if start < cut < end:
                    cut = start  # never split an audio run
            keep = [i for i, (_, end) in enumerate(runs) if end <= cut]
            audios = [audios[i] for i in keep]
            ids, labels = ids[:cut], labels[:cut]
            if all(x == IGNORE_INDEX for x in labels):
                raise _Overflow(f"sample {sample.id}: no text token fits in max_length {self.max_length}")
        return ids, labels, audios

    # ------------------------------------------------------------------------- batching
    @staticmethod
    def _pad(rows: Sequence[list[int]], value: int, length: int, side: str) -> torch.Tensor:
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, r in enumerate(rows):
            if not r:
                continue
            if side == "right":
                out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            else:
                out[i, length - len(r) :] = torch.tensor(r, dtype=torch.long)
        return out

    def _padded_length(self, rows: Sequence[list[int]]) -> int:
        length = max((len(r) for r in rows), default=0)
        m = self.pad_to_multiple_of
        if m and length % m:
            length += m - length % m
        return length

    def __call__(self, samples: Sequence[Sample | Mapping[str, Any] | SkippedRow | None]) -> dict[str, Any]:
        skipped: Counter[str] = Counter()
        skipped_rows: list[SkippedRow] = []
        ids_rows, label_rows, masks, audio_rows, kept = [], [], [], [], []
        for sample in samples:
            if sample is None:
                skipped[BAD_AUDIO] += 1
                continue
            if isinstance(sample, SkippedRow):
                skipped[sample.reason] += 1
                skipped_rows.append(sample)
                continue
            if not isinstance(sample, Sample):
                sample = Sample.from_mapping(sample)
            try:
                if self.mode == "chat":
                    ids, labels, audios = self._encode_chat(sample)
                else:
                    ids, labels, audios = self._encode_mixed(sample)
            except _Overflow as exc:
                if self.on_overflow == "error":
                    raise ValueError(str(exc)) from None
                skipped[EXCEEDS_MAX_LENGTH] += 1
                skipped_rows.append(SkippedRow(sample.id, EXCEEDS_MAX_LENGTH))
                continue
            ids_rows.append(ids)
            label_rows.append(labels)
            masks.append([1] * len(ids))
            audio_rows.append(audios)
            kept.append(sample)

        length = self._padded_length(ids_rows)
        batch: dict[str, Any] = {
            "input_ids": self._pad(ids_rows, self.pad_token_id, length, self.padding_side),  # [B, L]
            "attention_mask": self._pad(masks, 0, length, self.padding_side),  # [B, L]
        }
        if not self.inference:
            batch["labels"] = self._pad(label_rows, IGNORE_INDEX, length, self.padding_side)  # [B, L]

        flat = [(row, a) for row, audios in enumerate(audio_rows) for a in audios]
        max_samples = max((len(a) for _, a in flat), default=0)
        audio_values = torch.zeros(len(flat), max_samples, dtype=torch.float32)  # [N, S]
        for i, (_, a) in enumerate(flat):
            audio_values.numpy()[i, : len(a)] = a  # a copy; `a` may be a read-only memoized waveform
        batch["audio_values"] = audio_values
        batch["audio_lengths"] = torch.tensor([len(a) for _, a in flat], dtype=torch.long)  # [N]
        batch["audio_sample_idx"] = torch.tensor([row for row, _ in flat], dtype=torch.long)  # [N]

        if self.with_transcript:
            text_rows = []
            for sample in kept:
                transcript = sample.transcript
                if not transcript or not transcript.strip():
                    raise ValueError(f"sample {sample.id}: with_transcript needs a non-empty transcript")
                text_rows.append(self._transcript_ids(transcript.strip()))
            # The transcript side is always right-padded: it is pooled, never generated from.
            t_len = self._padded_length(text_rows)
            batch["text_input_ids"] = self._pad(text_rows, self.pad_token_id, t_len, "right")  # [B, Lt]
            text_mask = [[1] * len(r) for r in text_rows]
            batch["text_attention_mask"] = self._pad(text_mask, 0, t_len, "right")  # [B, Lt]
        if self.inference:
            batch["ids"] = [s.id for s in kept]
            batch["meta"] = [{k: getattr(s, k) for k in _META_KEYS} for s in kept]
        batch["skipped"] = dict(skipped)
        batch["skipped_rows"] = skipped_rows
        return batch
