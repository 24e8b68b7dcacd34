"""Speech encoders: any HF audio model (HuBERT, WavLM, wav2vec2, Whisper encoder) behind one API.

The wrapper takes raw 16 kHz waveforms and does the model's own feature extraction internally, so
the data side never depends on which encoder is used:

    audio_values [N, S], audio_lengths [N]  ->  feats [N, T, De], frame_mask [N, T]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2FeatureExtractor,
    WhisperFeatureExtractor,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderKind:
    """How one family of encoders is fed and how long its output is."""

    whisper: bool  # log-mel input padded to a fixed window; otherwise raw waveform input
    sdpa: bool  # whether the family supports attn_implementation="sdpa"


# Keyed by `config.model_type`. WavLM's relative-position attention has no SDPA path.
ENCODER_KINDS: dict[str, EncoderKind] = {
    "hubert": EncoderKind(whisper=False, sdpa=True),
    "wav2vec2": EncoderKind(whisper=False, sdpa=True),
    "wavlm": EncoderKind(whisper=False, sdpa=False),
    "whisper": EncoderKind(whisper=True, sdpa=True),
}


def encoder_kind(config: PretrainedConfig) -> EncoderKind:
    """Look up the encoder family of `config`; unknown families are an error listing the known ones."""
    try:
        return ENCODER_KINDS[config.model_type]
    except KeyError:
        raise ValueError(
            f"unsupported audio encoder type {config.model_type!r}; known: {sorted(ENCODER_KINDS)}"
        ) from None


def default_feature_extractor(config: PretrainedConfig):
    """The feature extractor an encoder built from a bare config would ship with."""
    if encoder_kind(config).whisper:
        # Whisper needs exactly 2 x max_source_positions mel frames (hop 160 at 16 kHz).
        n_samples = 2 * config.max_source_positions * 160
        fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000, hop_length=160)
        fe.n_samples = n_samples
        fe.nb_max_frames = n_samples // 160
        fe.chunk_length = n_samples / 16000
        return fe
    # A layer-norm feature encoder (HuBERT-large, wav2vec2-large-lv60) is trained with attention masks.
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=getattr(config, "feat_extract_norm", "group") == "layer",
    )


class AudioEncoder(nn.Module):
    """A frozen-or-trainable HF speech encoder with waveform input and a frame mask output."""

    def __init__(self, model: PreTrainedModel, feature_extractor=None, layer: int = -1) -> None:
        super().__init__()
        self.kind = encoder_kind(model.config)
        if self.kind.whisper and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = model
        self.feature_extractor = feature_extractor or default_feature_extractor(model.config)
        self.layer = layer
        self.frozen = False  # set by `llava.model.builder.apply_training_mode`
        # Optional `llava.model.feature_cache.FeatureCache` (see `attach_feature_cache`); a plain
        # attribute, not a submodule, so it never enters state dicts or device moves.
        self.feature_cache = None
        self._cache_bypass_logged = False

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, layer: int = -1, attn_implementation: str | None = None, **kwargs
    ) -> AudioEncoder:
        """Load weights and feature extractor from a hub id or a local directory."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path)
        kind = encoder_kind(config)
        attn = attn_implementation if (kind.sdpa or attn_implementation != "sdpa") else "eager"
        model = AutoModel.from_pretrained(name_or_path, attn_implementation=attn, **kwargs)
        return cls(model, AutoFeatureExtractor.from_pretrained(name_or_path), layer=layer)

    @classmethod
    def from_config(
        cls, config: PretrainedConfig, layer: int = -1, attn_implementation: str | None = None
    ) -> AudioEncoder:
        """A randomly initialised encoder (tests, architecture studies)."""
        kind = encoder_kind(config)
        attn = attn_implementation if (kind.sdpa or attn_implementation != "sdpa") else "eager"
        if kind.whisper:  # the decoder is never used: build the encoder alone
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            config._attn_implementation = attn
            return cls(WhisperEncoder(config), layer=layer)
        return cls(AutoModel.from_config(config, attn_implementation=attn), layer=layer)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return cfg.d_model if self.kind.whisper else cfg.hidden_size

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def samples_per_frame(self) -> int:
        if self.kind.whisper:
            return 2 * self.feature_extractor.hop_length  # mel hop x conv stride 2
        return math.prod(self.model.config.conv_stride)

    @property
    def frame_rate(self) -> float:
        """Encoder output frames per second (50 for HuBERT and Whisper at 16 kHz)."""
        return self.sampling_rate / self.samples_per_frame

    @property
    def max_samples(self) -> int | None:
        return self.feature_extractor.n_samples if self.kind.whisper else None

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Number of valid output frames for inputs of `num_samples` samples ([N] long)."""
        num_samples = torch.as_tensor(num_samples, dtype=torch.long)
        if self.kind.whisper:
            frames = torch.div(
                num_samples + self.samples_per_frame - 1, self.samples_per_frame, rounding_mode="floor"
            )
            return frames.clamp(max=self.model.config.max_source_positions)
        return self.model._get_feat_extract_output_lengths(num_samples).long()

    def train(self, mode: bool = True) -> AudioEncoder:
        # A frozen encoder must not run dropout, layer drop or SpecAugment when the trainer flips the
        # whole model into training mode.
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def output_frames(self, num_samples: int) -> int:
        """Frames T of the encoder output for a (padded) input of `num_samples` samples."""
        if self.kind.whisper:
            return int(self.model.config.max_source_positions)  # fixed 30 s window
        return int(self.frame_lengths(torch.tensor([num_samples]))[0])

    def forward(
        self, audio_values: torch.Tensor, audio_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio_values [N, S] float, audio_lengths [N] -> feats [N, T, De], frame_mask [N, T] bool.

        With a feature cache attached and the encoder frozen, features come from the cache (see
        `llava.model.feature_cache` for the exact semantics); a training encoder bypasses it."""
        if self.max_samples is not None and int(audio_lengths.max()) > self.max_samples:
            raise ValueError(
                f"audio of {int(audio_lengths.max())} samples exceeds the Whisper encoder's fixed window of "
                f"{self.max_samples} samples ({self.max_samples / self.sampling_rate:.1f} s); filter longer "
                "utterances with max_duration in the data config"
            )
        if self.feature_cache is not None and audio_values.shape[0] > 0:
            if self.frozen and not any(p.requires_grad for p in self.parameters()):
                return self.feature_cache.features(self, audio_values, audio_lengths)
            if not self._cache_bypass_logged:
                self._cache_bypass_logged = True
                logger.info("audio feature cache bypassed: the audio encoder trains (unfrozen or LoRA)")
        return self.encode(audio_values, audio_lengths)

    def encode(
        self, audio_values: torch.Tensor, audio_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder pass itself (no cache): same contract as `forward`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            inputs = self._featurize(audio_values, audio_lengths)
            want_hidden = self.layer != -1
            out = self.model(**inputs, output_hidden_states=want_hidden)
            feats = out.hidden_states[self.layer] if want_hidden else out.last_hidden_state  # [N, T, De]
        lengths = self.frame_lengths(audio_lengths.cpu()).to(feats.device)
        frame_mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]  # [N, T]
        return feats, frame_mask

    def _featurize(self, audio_values: torch.Tensor, audio_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        device = audio_values.device
        dtype = next(self.model.parameters()).dtype
        if self.kind.whisper:
            waves = [w[: int(n)].float().cpu().numpy() for w, n in zip(audio_values, audio_lengths)]
            feats = self.feature_extractor(
                waves, sampling_rate=self.sampling_rate, return_tensors="pt", padding="max_length"
            ).input_features
            return {"input_features": feats.to(device=device, dtype=dtype)}
        x = audio_values.float()
        sample_mask = (
            torch.arange(x.shape[1], device=device)[None, :] < audio_lengths.to(device)[:, None]
        )  # [N, S]
        if getattr(self.feature_extractor, "do_normalize", False):
            # Per-utterance zero mean / unit variance over valid samples only (as the HF extractor does).
            n = sample_mask.sum(1, keepdim=True).clamp(min=1)
            mean = (x * sample_mask).sum(1, keepdim=True) / n
            var = (((x - mean) * sample_mask) ** 2).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7)
        x = x * sample_mask
        inputs = {"input_values": x.to(dtype)}
        if getattr(self.feature_extractor, "return_attention_mask", False):
            inputs["attention_mask"] = sample_mask.long()
        return inputs
