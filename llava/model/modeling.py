"""`SpeechLlavaForCausalLM`: audio encoder -> projector -> splice into a causal LLM.

The collator expands each `<audio>` placeholder into exactly as many placeholder tokens as the
projector produces for that segment (`num_audio_tokens`); here those positions are filled with the
projector outputs by `masked_scatter`, and a count mismatch is an error rather than a silent shift.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from llava.model.configuration import SpeechLlavaConfig
from llava.model.encoders import AudioEncoder
from llava.model.projectors import build_projector


class SpeechLlavaForCausalLM(nn.Module):
    """Members: `audio_tower` (AudioEncoder), `projector`, `language_model` (any causal LM).

    Pass pre-built `audio_tower` / `language_model` to wrap pretrained weights (see
    `llava.model.builder`); otherwise both are built with random weights from the config.
    """

    def __init__(
        self,
        config: SpeechLlavaConfig,
        audio_tower: AudioEncoder | None = None,
        language_model: PreTrainedModel | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if config.audio_token_id is None:
            raise ValueError(
                "SpeechLlavaConfig.audio_token_id is not set (see llava.tokenization.add_audio_token)"
            )
        self.config = config
        self.audio_tower = audio_tower or AudioEncoder.from_config(
            config.audio_config, layer=config.encoder_layer, attn_implementation=attn_implementation
        )
        self.language_model = language_model or AutoModelForCausalLM.from_config(
            config.text_config, attn_implementation=attn_implementation
        )
        self.projector = build_projector(
            config.projector_type,
            config.projector_config,
            encoder_dim=self.audio_tower.hidden_size,
            llm_dim=self.llm_hidden_size,
            frame_rate=self.audio_tower.frame_rate,
        )
        # An output scale matched to the LLM's embeddings (projector option output_norm) is measured
        # here, once, and recorded in the config so a checkpoint reloads with the same scale.
        target = self.projector.match_input_embeddings(self.language_model.get_input_embeddings().weight)
        if target is not None:
            self.config.projector_config["output_norm_target"] = target

    # ----------------------------------------------------------------------------- shapes
    @property
    def llm_hidden_size(self) -> int:
        return self.language_model.get_input_embeddings().weight.shape[1]

    @property
    def num_llm_layers(self) -> int:
        return self.language_model.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def num_audio_tokens(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """How many LLM positions an audio segment of `num_samples` samples becomes."""
        scalar = isinstance(num_samples, int)
        n = self.projector.output_lengths(self.audio_tower.frame_lengths(torch.as_tensor(num_samples)))
        return int(n) if scalar else n

    # ----------------------------------------------------------------------------- embedding
    def embed_audio(
        self, audio_values: torch.Tensor, audio_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio_values [N, S], audio_lengths [N] -> embeds [N, Q, Dl], mask [N, Q] bool."""
        feats, frame_mask = self.audio_tower(audio_values, audio_lengths)  # [N, T, De], [N, T]
        return self.projector(feats, frame_mask)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        audio_values: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, L] with audio-token runs -> inputs_embeds [B, L, Dl] with audio spliced in."""
        if audio_values is None:
            return self.splice(input_ids, None, None)
        return self.splice(input_ids, *self.embed_audio(audio_values, audio_lengths))

    def splice(
        self, input_ids: torch.Tensor, audio_embeds: torch.Tensor | None, audio_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Token embeddings of input_ids [B, L] with the audio-token runs replaced, in order, by the
        valid rows of audio_embeds [N, Q, Dl] (audio_mask [N, Q]) -> [B, L, Dl]."""
        slots = input_ids == self.config.audio_token_id  # [B, L]
        # The placeholder id may lie outside the LLM's vocabulary (no resize); embed a safe id instead.
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        n_slots = int(slots.sum())
        if audio_embeds is None:
            if n_slots:
                raise ValueError(f"input_ids hold {n_slots} audio placeholder tokens but no audio was given")
            return embeds
        flat = audio_embeds[audio_mask]  # [total valid outputs, Dl], segments in order
        if flat.shape[0] != n_slots:
            raise ValueError(
                f"audio placeholder count mismatch: input_ids hold {n_slots} audio tokens but the projector "
                f"produced {flat.shape[0]} outputs for {audio_embeds.shape[0]} segments (the collator must expand "
                "<audio> with model.num_audio_tokens)"
            )
        return embeds.masked_scatter(slots[..., None], flat.to(embeds.dtype))

    def llm_hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        layers: list[int],
        position_ids: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Hidden states [B, L, Dl] of the LLM at `layers` (0 = the input embeddings, which need no
        LLM pass). Runs the decoder stack without the LM head."""
        out = {0: inputs_embeds} if 0 in layers else {}
        if any(layer > 0 for layer in layers):
            decoder = self.language_model.get_decoder()
            hidden = decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                use_cache=False,
            ).hidden_states
            out.update({layer: hidden[layer] for layer in layers if layer > 0})
        return out

    # ----------------------------------------------------------------------------- forward / generate
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """Causal-LM forward on the spliced sequence; returns the LLM's output (loss when labels given)."""
        inputs_embeds = self.embed_inputs(input_ids, audio_values, audio_lengths)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_values: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        **generation_kwargs: Any,
    ) -> torch.Tensor:
        """Generate from left-padded prompts with audio; returns the new tokens only [B, new]."""
        inputs_embeds = self.embed_inputs(input_ids, audio_values, audio_lengths)
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs
        )

    # ----------------------------------------------------------------------------- trainer hooks
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the LLM (and a trainable encoder); the projector is small and left as is."""
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if not self.audio_tower.frozen and hasattr(self.audio_tower.model, "gradient_checkpointing_enable"):
            self.audio_tower.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # Frozen input embeddings give outputs without grad; checkpointed blocks then see no input
        # requiring grad. The spliced projector outputs do require grad, so nothing else is needed.

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (projector, LoRA weights): what a checkpoint holds."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
