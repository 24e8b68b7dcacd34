"""`SpeechLlavaProcessor`: (text with `<audio>`, waveforms) -> the inputs of `SpeechLlavaForCausalLM`.

    processor = AutoProcessor.from_pretrained(export_dir)
    inputs = processor(text=prompt_with_audio_placeholder, audio=waveform, sampling_rate=16000)
    new_tokens = model.generate(**inputs, max_new_tokens=64)

Each `<audio>` in the text becomes a run of as many `<audio>` ids as the projector produces for its
waveform (`AudioTokenRule`, the model's `num_audio_tokens` written down as numbers, so the processor
needs no model); waveforms are matched to placeholders in order, over the whole batch. Output
(left padded by default, for generation):

    input_ids [B, L], attention_mask [B, L], audio_values [N, S] float32, audio_lengths [N]

The model featurises raw waveforms itself (normalisation, log-mel), so the feature extractor here
only fixes the sampling rate (other rates are resampled with soxr) and, for Whisper, the longest input.
The text is tokenized as given, without adding special tokens: chat-template output already holds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from llava.constants import AUDIO_TOKEN

__all__ = ["AudioTokenRule", "SpeechLlavaProcessor"]

# Lengths (in samples) the rule is checked on against the model it was read from.
_CHECK_LENGTHS = (
    1,
    79,
    320,
    399,
    400,
    401,
    1000,
    4799,
    4800,
    9999,
    16000,
    16001,
    33333,
    48000,
    160_000,
    480_000,
)


@dataclass(frozen=True)
class AudioTokenRule:
    """How many LLM positions a waveform of n samples becomes: encoder frames, then projector groups.

    Encoder frames: waveform encoders (HuBERT, WavLM, wav2vec2) apply their feature-encoder
    convolutions (`conv_kernel`, `conv_stride`); log-mel encoders (Whisper) give one frame per
    `samples_per_frame` samples, at most `max_frames`. The projector reads groups of
    `frames_per_group` frames (a Q-Former window, a stacking factor) and emits `tokens_per_group`
    positions per group (Q-Former queries), a partial last group included.
    """

    conv_kernel: tuple[int, ...] = ()  # waveform encoders: kernel of each feature-encoder convolution
    conv_stride: tuple[int, ...] = ()  # waveform encoders: stride of each convolution
    samples_per_frame: int = 0  # log-mel encoders: input samples per output frame (0 = waveform encoder)
    max_frames: int | None = None  # log-mel encoders: frames of the fixed input window
    max_samples: int | None = None  # longest input the encoder takes (Whisper's window); None: no limit
    frames_per_group: int = 1  # projector: encoder frames per group
    tokens_per_group: int = 1  # projector: LLM positions per group

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_kernel", tuple(int(k) for k in self.conv_kernel))
        object.__setattr__(self, "conv_stride", tuple(int(s) for s in self.conv_stride))
        if len(self.conv_kernel) != len(self.conv_stride):
            raise ValueError("AudioTokenRule: conv_kernel and conv_stride must have the same length")
        if not self.conv_kernel and self.samples_per_frame < 1:
            raise ValueError("AudioTokenRule: set conv_kernel/conv_stride or samples_per_frame")
        if self.frames_per_group < 1 or self.tokens_per_group < 1:
            raise ValueError("AudioTokenRule: frames_per_group and tokens_per_group must be >= 1")

    def frames(self, num_samples: int) -> int:
        """Encoder output frames for `num_samples` input samples."""
        if self.samples_per_frame:
            n = math.ceil(num_samples / self.samples_per_frame)
            return min(n, self.max_frames) if self.max_frames is not None else n
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
        return n

    def __call__(self, num_samples: int) -> int:
        """LLM positions (`<audio>` ids) for a waveform of `num_samples` samples."""
        frames = self.frames(num_samples)
        return max(0, -(-frames // self.frames_per_group)) * self.tokens_per_group

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["conv_kernel"], data["conv_stride"] = list(self.conv_kernel), list(self.conv_stride)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioTokenRule:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"audio_token_rule: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_model(cls, model: Any) -> AudioTokenRule:
        """Read the rule off a `SpeechLlavaForCausalLM`, checked against its `num_audio_tokens`."""
        tower = model.audio_tower
        cfg = tower.model.config
        if tower.kind.whisper:
            encoder = dict(
                samples_per_frame=tower.samples_per_frame,
                max_frames=int(cfg.max_source_positions),
                max_samples=tower.max_samples,
            )
        else:
            encoder = dict(conv_kernel=tuple(cfg.conv_kernel), conv_stride=tuple(cfg.conv_stride))
        # The projector's groups, probed: q positions for the first frame, a new group after f frames.
        lengths = model.projector.output_lengths
        q = int(lengths(torch.tensor([1]))[0])
        f = 1
        while f < 10_000 and int(lengths(torch.tensor([f + 1]))[0]) == q:
            f += 1
        rule = cls(**encoder, frames_per_group=f, tokens_per_group=max(q, 1))
        limit = rule.max_samples or max(_CHECK_LENGTHS)
        for n in (n for n in _CHECK_LENGTHS if n <= limit):
            want = int(model.num_audio_tokens(n))
            if rule(n) != want:
                raise NotImplementedError(
                    f"AudioTokenRule: the model makes {want} audio positions of {n} samples, the rule "
                    f"{rule(n)}; this encoder/projector combination needs its own length rule"
                )
        return rule


def _is_single_wave(audio: Any) -> bool:
    if isinstance(audio, np.ndarray | torch.Tensor):
        return audio.ndim <= 1
    return isinstance(audio, Sequence) and len(audio) > 0 and isinstance(audio[0], int | float | np.number)


class SpeechLlavaProcessor(ProcessorMixin):
    """Tokenizer + feature extractor + the `<audio>` length rule of one model (see the module docs).

    Args:
        feature_extractor: the encoder's feature extractor (its sampling rate is the model's).
        tokenizer: the LLM's tokenizer with `<audio>` registered and a chat template.
        chat_template: the chat template (default: the tokenizer's).
        audio_token: the placeholder text.
        audio_token_rule: `AudioTokenRule.to_dict()` of the model.
    """

    def __init__(
        self,
        feature_extractor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        audio_token: str = AUDIO_TOKEN,
        audio_token_rule: dict[str, Any] | None = None,
    ) -> None:
        if audio_token_rule is None:
            raise ValueError(
                "SpeechLlavaProcessor: audio_token_rule is required (AudioTokenRule.from_model(model).to_dict())"
            )
        self.audio_token = audio_token
        self.audio_token_rule = dict(audio_token_rule)
        self.rule = AudioTokenRule.from_dict(self.audio_token_rule)
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        if audio_token not in tokenizer.get_vocab():
            raise ValueError(f"SpeechLlavaProcessor: the tokenizer has no {audio_token!r} token")
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if tokenizer.pad_token_id is None:
            raise ValueError("SpeechLlavaProcessor: the tokenizer has no pad token")

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any) -> SpeechLlavaProcessor:
        """The processor of a loaded model and its tokenizer."""
        return cls(
            feature_extractor=model.audio_tower.feature_extractor,
            tokenizer=tokenizer,
            audio_token_rule=AudioTokenRule.from_model(model).to_dict(),
        )

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def num_audio_tokens(self, num_samples: int) -> int:
        """`<audio>` ids for a waveform of `num_samples` samples at `sampling_rate`."""
        return self.rule(num_samples)

    def _waveform(self, audio: Any, sampling_rate: int | None, index: int) -> np.ndarray:
        wave = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if wave.ndim != 1:
            raise ValueError(f"audio[{index}]: expected a mono waveform [S], got shape {tuple(wave.shape)}")
        wave = wave.astype(np.float32, copy=False)
        if wave.size == 0:
            raise ValueError(f"audio[{index}]: the waveform is empty")
        if not np.isfinite(wave).all():
            raise ValueError(f"audio[{index}]: the waveform holds NaN or infinite samples")
        if sampling_rate is not None and int(sampling_rate) != self.sampling_rate:
            from llava.dataset.audio import resample

            wave = resample(wave, int(sampling_rate), self.sampling_rate)
        limit = self.rule.max_samples
        if limit is not None and wave.size > limit:
            raise ValueError(
                f"audio[{index}]: {wave.size / self.sampling_rate:.2f} s is longer than the encoder's window "
                f"of {limit / self.sampling_rate:.2f} s"
            )
        return np.ascontiguousarray(wave)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        *,
        padding_side: str = "left",
        add_special_tokens: bool = False,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize `text` (one prompt or a batch) and pair its `<audio>` placeholders with `audio`.

        `audio`: one waveform or a list, one per placeholder in reading order over the batch; 1-D
        float arrays/tensors at `sampling_rate` (default: the feature extractor's; others are
        resampled). Returns input_ids / attention_mask [B, L] padded on `padding_side`, and
        audio_values [N, S] (zero padded) / audio_lengths [N] when there is audio.
        """
        if kwargs:
            raise TypeError(f"SpeechLlavaProcessor: unexpected arguments {sorted(kwargs)}")
        if text is None:
            raise ValueError(
                "SpeechLlavaProcessor: text is required (a prompt with one <audio> per waveform)"
            )
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if audio is None:
            audios: list[Any] = []
        else:
            audios = [audio] if _is_single_wave(audio) else list(audio)
        token_rows = [
            list(self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"]) for t in texts
        ]
        n_slots = sum(r.count(self.audio_token_id) for r in token_rows)
        if n_slots != len(audios):
            raise ValueError(
                f"SpeechLlavaProcessor: the text holds {n_slots} {self.audio_token} placeholder(s) but "
                f"{len(audios)} waveform(s) were given"
            )
        waves = [self._waveform(a, sampling_rate, i) for i, a in enumerate(audios)]
        runs = iter(waves)
        rows: list[list[int]] = []
        for ids in token_rows:
            row: list[int] = []
            for token in ids:
                if token == self.audio_token_id:
                    row += [self.audio_token_id] * self.rule(len(next(runs)))
                else:
                    row.append(token)
            rows.append(row)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [B, L]
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, L]
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            input_ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if waves:
            values = torch.zeros((len(waves), max(w.size for w in waves)), dtype=torch.float32)  # [N, S]
            for i, w in enumerate(waves):
                values[i, : w.size] = torch.from_numpy(w)
            data["audio_values"] = values
            data["audio_lengths"] = torch.tensor([w.size for w in waves], dtype=torch.long)  # [N]
        if return_tensors is None:
            data = {k: v.tolist() for k, v in data.items()}
            return BatchFeature(data)
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "audio_values", "audio_lengths"]
