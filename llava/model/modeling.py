"""`SpeechLlavaForCausalLM`: audio encoder -> projector -> splice into a causal LLM.

The collator expands each `<audio>` placeholder into exactly as many placeholder tokens as the
projector produces for that segment (`num_audio_tokens`); here those positions are filled with the
projector outputs by `masked_scatter`, and a count mismatch is an error rather than a silent shift.

Training objectives (`llava.train.objectives`) use four operations and nothing else: `embed_audio`,
`splice`, `hidden_states` (at chosen layers, stopping after the deepest) and `labelled_logits` (the
LM head on labelled positions only). The model itself knows nothing about training.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from llava.constants import IGNORE_INDEX
from llava.model import pretrained
from llava.model.configuration import SpeechLlavaConfig
from llava.model.encoders import AudioEncoder
from llava.model.prefix_cache import (
    PrefixCache,
    activation_checkpointing,
    llm_dropout_active,
    sharded_weights,
    shared_prefix_length,
)
from llava.model.projectors import PROJECTORS, build_projector


class SpeechLlavaForCausalLM(PreTrainedModel):
    """Members: `audio_tower` (AudioEncoder), `projector`, `language_model` (any causal LM).

    Pass pre-built `audio_tower` / `language_model` to wrap pretrained weights (see
    `llava.model.builder`); otherwise both are built with random weights from the config (with the
    LoRA adapters the config records, so a full export's weights fit).

    A `transformers` model: `from_pretrained` reads a trainable-only checkpoint (the base encoder and
    LLM come from the paths its config records) or a full export (`python -m llava.export`);
    `save_pretrained` writes the trainable-only format unless `trainable_only=False`
    (see `llava.model.pretrained`).
    """

    config_class = SpeechLlavaConfig
    # The LLM is what other libraries (PEFT, embedding resizing) treat as the base model.
    base_model_prefix = "language_model"
    main_input_name = "input_ids"
    # device_map="auto" keeps the audio tower and the projector whole; the LLM's decoder-layer classes
    # are gathered from the child by post_init.
    _no_split_modules = ["AudioEncoder", *(cls.__name__ for cls, _ in PROJECTORS.values())]
    supports_gradient_checkpointing = True
    # Attention is the sub-models' business; these only let the composite accept the setting.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(
        self,
        config: SpeechLlavaConfig,
        audio_tower: AudioEncoder | None = None,
        language_model: PreTrainedModel | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        if config.audio_token_id is None:
            raise ValueError(
                "SpeechLlavaConfig.audio_token_id is not set (see llava.tokenization.add_audio_token)"
            )
        super().__init__(config)
        # None: what the config asks for (from_pretrained(attn_implementation=...)), else sdpa.
        attn = attn_implementation or getattr(config, "_attn_implementation", None) or "sdpa"
        self.audio_tower = audio_tower or pretrained.audio_tower_from_config(config, attn)
        self.language_model = language_model or AutoModelForCausalLM.from_config(
            config.text_config, attn_implementation=attn
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
        if audio_tower is None and language_model is None:
            pretrained.wrap_lora_from_config(self)  # the adapters a full export's weights include
        # The frozen LLM's keys and values of the text every row starts with (llava.model.prefix_cache);
        # a runtime setting (--reuse_shared_prefix), not part of the config.
        self.reuse_shared_prefix = True
        self.prefix_cache = PrefixCache()
        self.post_init()

    # ----------------------------------------------------------------------------- transformers API
    def init_weights(self) -> None:
        """Tie weights only: each part arrives initialised (the encoder and LLM by their constructors
        or pretrained weights, the projector by its own), and initialising again would overwrite
        pretrained weights. `from_pretrained` still initialises what a full export lacks."""
        pretrained.tie_weights(self)

    def _init_weights(self, module: nn.Module) -> None:
        # Modules of our own (projector, wrappers) initialise themselves when built.
        return

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """A trainable-only checkpoint or a full export (see `llava.model.pretrained.from_pretrained`)."""
        return pretrained.from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory, *args: Any, trainable_only: bool = True, **kwargs: Any):
        """The trainable-only checkpoint (default) or, with `trainable_only=False`, every weight in
        safetensors shards (`transformers`' own format; see `llava.model.pretrained.save_pretrained`)."""
        return pretrained.save_pretrained(
            self, save_directory, *args, trainable_only=trainable_only, **kwargs
        )

    def _save_full(self, save_directory, *args: Any, **kwargs: Any):
        """`PreTrainedModel.save_pretrained` itself (every weight)."""
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def _from_pretrained_full(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained` itself (a directory holding every weight)."""
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

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
        valid rows of audio_embeds [N, Q, Dl] (audio_mask [N, Q]) -> [B, L, Dl].

        The placeholder count is checked against the projector's valid outputs: a mismatch would shift
        every later audio segment silently, so it is an error. That check is the one host sync here
        (a device-side assert would give no message and poison a CUDA context); the splice itself is
        sync-free (no boolean indexing).
        """
        slots = input_ids == self.config.audio_token_id  # [B, L]
        # The placeholder id may lie outside the LLM's vocabulary (no resize); embed a safe id instead.
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        if audio_embeds is None or audio_embeds.shape[0] == 0:
            n_slots = int(slots.sum())
            if n_slots:
                raise ValueError(f"input_ids hold {n_slots} audio placeholder tokens but no audio was given")
            return embeds
        n_slots, n_valid = torch.stack([slots.sum(), audio_mask.sum()]).tolist()
        if n_slots != n_valid:
            raise ValueError(
                f"audio placeholder count mismatch: input_ids hold {n_slots} audio tokens but the projector "
                f"produced {n_valid} outputs for {audio_embeds.shape[0]} segments (the collator must expand "
                "<audio> with model.num_audio_tokens)"
            )
        # Valid rows first, segments in order (stable sort): masked_scatter consumes them in order.
        order = torch.argsort((~audio_mask.reshape(-1)).to(torch.uint8), stable=True)  # [N * Q]
        flat = audio_embeds.reshape(-1, audio_embeds.shape[-1]).index_select(0, order)  # [N * Q, Dl]
        return embeds.masked_scatter(slots[..., None], flat.to(embeds.dtype))

    def shared_prefix_length(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> int:
        """How many leading positions of input_ids [B, L] `hidden_states(prefix_ids=...)` can take from
        the prefix cache: the text run every row shares (see `llava.model.prefix_cache`); 0 when the
        reuse is off or could change the result (trainable LLM weights, LLM dropout, checkpointing) or
        desynchronise ranks (sharded LLM weights)."""
        llm = self.language_model
        if (
            not self.reuse_shared_prefix
            or activation_checkpointing(llm)
            or llm_dropout_active(llm)
            or any(p.requires_grad for p in llm.parameters())
            or sharded_weights(llm)
        ):
            return 0
        return shared_prefix_length(input_ids, attention_mask, self.config.audio_token_id, labels)

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        layers: Sequence[int],
        position_ids: torch.Tensor | None = None,
        prefix_ids: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Hidden states [B, L, Dl] of the LLM at `layers` (indices 0..N as in `llava.model.layers`).

        Layer 0 is the input embeddings and needs no LLM pass. The decoder stops after the deepest
        layer asked for (its final norm runs only when the last layer N is asked for, as with
        `output_hidden_states=True`); the LM head never runs.

        prefix_ids [P] (P from `shared_prefix_length`, the ids every row starts with): the prefix's keys
        and values come from the prefix cache and the states returned are those of positions P..L-1,
        [B, L - P, Dl]; attention_mask stays [B, L].
        """
        n = self.num_llm_layers
        bad = [k for k in layers if not 0 <= k <= n]
        if bad or not layers:
            raise ValueError(f"hidden_states: layers {list(layers)} must be non-empty and within 0..{n}")
        decoder = self.language_model.get_decoder()
        cache: dict = {}
        skip = 0 if prefix_ids is None else int(prefix_ids.shape[0])
        if skip:
            cache = self.prefix_cache.decoder_kwargs(
                decoder, inputs_embeds[:1, :skip].detach(), prefix_ids, inputs_embeds.shape[0]
            )
            inputs_embeds = inputs_embeds[:, skip:]
            position_ids = None if position_ids is None else position_ids[:, skip:]
        out = {0: inputs_embeds} if 0 in layers else {}
        deepest = max(layers)
        if deepest == 0:
            return out
        kwargs = dict(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **cache
        )
        blocks, norm = getattr(decoder, "layers", None), getattr(decoder, "norm", None)
        if not isinstance(blocks, nn.ModuleList) or not isinstance(norm, nn.Module):
            # A decoder without the usual `layers` + `norm` members: one full pass, correct but slower.
            hidden = decoder(**kwargs, output_hidden_states=True, use_cache=False).hidden_states
            return {**out, **{k: hidden[k] for k in layers if k > 0}}
        # Layer k's output (k < N) is what `output_hidden_states` reports as hidden_states[k]; only
        # the last one is normed. Keep the outputs of the layers asked for, run no layer past the
        # deepest, and skip the final norm unless layer N itself is wanted.
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            blocks[k - 1].register_forward_hook(partial(_keep_output, captured, k))
            for k in layers
            if 0 < k < n
        ]
        try:
            if deepest < n:
                decoder.layers, decoder.norm = nn.ModuleList(blocks[:deepest]), nn.Identity()
            last = decoder(**kwargs, use_cache=False).last_hidden_state  # [B, L, Dl]
        finally:
            decoder.layers, decoder.norm = blocks, norm
            for hook in hooks:
                hook.remove()
        if n in layers:
            captured[n] = last
        return {**out, **{k: captured[k] for k in layers if k > 0}}

    def labelled_logits(
        self, hidden: torch.Tensor, labels: torch.Tensor, num_labelled: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM-head logits [N, V] at the positions that predict a labelled token, and those tokens [N].

        hidden [B, L, Dl] is the LLM's last hidden state, labels [B, L] hold IGNORE_INDEX outside the
        target; position t predicts labels[:, t + 1]. Only those N rows go through the LM head (with a
        128k vocabulary, full-sequence logits would dwarf the rest of the step's memory).
        `num_labelled`, when the caller knows it on the host (e.g. counted by the data loader),
        saves the host sync that selecting a data-dependent number of rows otherwise needs.
        """
        targets = labels[:, 1:].reshape(-1)  # [B * (L-1)]
        picked = targets != IGNORE_INDEX
        if num_labelled is None:
            num_labelled = int(picked.sum())
        if num_labelled == 0:
            raise ValueError("no labelled token in the batch: check the collator's labels")
        # Labelled positions first, in order (stable sort), without boolean indexing.
        index = torch.argsort((~picked).to(torch.uint8), stable=True)[:num_labelled]  # [N]
        rows = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, index)  # [N, Dl]
        logits = self.language_model.get_output_embeddings()(rows)  # [N, V]
        cap = getattr(self.language_model.config, "final_logit_softcapping", None)
        if cap:  # Gemma-2-style models squash their logits; match their own forward
            logits = cap * torch.tanh(logits / cap)
        return logits, targets.index_select(0, index)

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
    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Checkpoint the LLM (and a trainable encoder); the projector is small and left as is.

        The Trainer's `--gradient_checkpointing` / `--activation_checkpointing` call this."""
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        self.language_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )
        encoder = self.audio_tower.model
        if not self.audio_tower.frozen and hasattr(encoder, "activation_checkpointing_enable"):
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        # Frozen input embeddings give outputs without grad; checkpointed blocks then see no input
        # requiring grad. The spliced projector outputs do require grad, so nothing else is needed.

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (projector, LoRA weights): what a checkpoint holds."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


def _keep_output(
    store: dict[int, torch.Tensor], layer: int, module: nn.Module, args: Any, output: Any
) -> None:
    # Decoder layers return the hidden state, or a tuple starting with it (older transformers).
    store[layer] = output[0] if isinstance(output, tuple) else output
