"""Building, freezing, LoRA-wrapping and loading speech LLMs.

`load_pretrained_model` is the one loader that fine-tuning, evaluation and the chat CLI use.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from llava.model.checkpoint import load_into, read_config, read_weights
from llava.model.configuration import SpeechLlavaConfig, _as_config
from llava.model.encoders import AudioEncoder
from llava.model.modeling import SpeechLlavaForCausalLM
from llava.model.projectors import projector_settings
from llava.tokenization import add_audio_token, ensure_pad_token

logger = logging.getLogger(__name__)


# Weight dtypes by the names every flag uses (--frozen_dtype, --dtype, --encoder_dtype); "auto" means
# something different to each of them and is resolved by its caller.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def dtype_by_name(name: str, flag: str) -> torch.dtype:
    """`DTYPES[name]`, or an error naming the flag and the known names."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"{flag} {name!r}: expected auto or one of {sorted(DTYPES)}") from None


LORA_BIAS = ("none", "all", "lora_only")


@dataclass
class LoraSettings:
    """LoRA settings of one component (the LLM or the encoder), as `peft.LoraConfig` takes them."""

    r: int = 8  # rank of the update matrices
    alpha: int = 16  # scaling numerator (update is scaled by alpha / r, or alpha / sqrt(r) with rsLoRA)
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # module names to adapt
    bias: str = "none"  # which biases train too: none | all | lora_only
    use_rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        self.target_modules = list(self.target_modules)
        if self.bias not in LORA_BIAS:
            raise ValueError(f"LoRA bias {self.bias!r}: expected one of {list(LORA_BIAS)}")
        if self.r < 1:
            raise ValueError(f"LoRA rank r = {self.r}: must be at least 1")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty")


def build_model(
    audio_encoder: str | dict | PretrainedConfig,
    llm: str | dict | PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    projector_type: str = "qformer",
    projector_config: dict[str, Any] | None = None,
    encoder_layer: int = -1,
    attn_implementation: str = "sdpa",
    llm_dtype: torch.dtype | None = None,
    encoder_dtype: torch.dtype | None = None,
) -> tuple[SpeechLlavaForCausalLM, PreTrainedTokenizerBase]:
    """Assemble encoder + projector + LLM.

    `audio_encoder` / `llm` are hub ids or directories (pretrained weights) or configs (random
    weights). The tokenizer defaults to the LLM's; `<audio>` and a pad token are added to it.
    Settings are validated (projector name and options) before any weights are loaded.
    """
    projector_settings(projector_type, projector_config)  # fail before the expensive part

    if isinstance(tokenizer, str) or (tokenizer is None and isinstance(llm, str)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or llm)
    if tokenizer is None:
        raise ValueError("build_model: pass a tokenizer when the LLM is built from a config")
    audio_token_id = add_audio_token(tokenizer)
    ensure_pad_token(tokenizer)

    if isinstance(audio_encoder, str):
        tower = AudioEncoder.from_pretrained(
            audio_encoder, layer=encoder_layer, attn_implementation=attn_implementation, dtype=encoder_dtype
        )
    else:
        tower = AudioEncoder.from_config(
            _as_config(audio_encoder, "audio_config"),
            layer=encoder_layer,
            attn_implementation=attn_implementation,
        )
        if encoder_dtype is not None:
            tower.to(encoder_dtype)
    check_encoder_layer(encoder_layer, tower.model.config, "encoder_layer (--mm_speech_select_layer)")
    if isinstance(llm, str):
        lm = AutoModelForCausalLM.from_pretrained(
            llm, dtype=llm_dtype, attn_implementation=attn_implementation
        )
    else:
        lm = AutoModelForCausalLM.from_config(
            _as_config(llm, "text_config"), attn_implementation=attn_implementation
        )
        if llm_dtype is not None:
            lm.to(llm_dtype)

    config = SpeechLlavaConfig(
        audio_config=tower.model.config,
        text_config=lm.config,
        audio_encoder_name_or_path=audio_encoder if isinstance(audio_encoder, str) else None,
        llm_name_or_path=llm if isinstance(llm, str) else None,
        projector_type=projector_type,
        projector_config=projector_config,
        encoder_layer=encoder_layer,
        audio_token_id=audio_token_id,
    )
    model = SpeechLlavaForCausalLM(config, audio_tower=tower, language_model=lm)
    return model, tokenizer


def encoder_num_layers(audio_config: PretrainedConfig) -> int:
    """Number of transformer layers of an audio encoder config (Whisper names it differently)."""
    for name in ("num_hidden_layers", "encoder_layers"):
        if isinstance(getattr(audio_config, name, None), int):
            return getattr(audio_config, name)
    raise ValueError(f"cannot tell the number of layers of a {audio_config.model_type!r} encoder config")


def check_encoder_layer(layer: int, audio_config: PretrainedConfig, what: str) -> None:
    """The encoder exposes num_layers + 1 hidden states (0 = the input to the first layer)."""
    n = encoder_num_layers(audio_config)
    if not -(n + 1) <= layer <= n:
        raise ValueError(
            f"{what} = {layer} is out of range for a {n}-layer {audio_config.model_type} encoder: "
            f"expected {-(n + 1)}..{n} (0 = input to the first layer, -1 = last layer)"
        )


def apply_training_mode(
    model: SpeechLlavaForCausalLM,
    freeze_encoder: bool = True,
    freeze_projector: bool = False,
    freeze_llm: bool = True,
    lora_llm: LoraSettings | None = None,
    lora_encoder: LoraSettings | None = None,
    freeze: Sequence[str] = (),
    flags: dict[str, str] | None = None,
) -> SpeechLlavaForCausalLM:
    """Set which parts train. LoRA wraps the LLM and/or the encoder with `peft` (base weights frozen).

    `freeze` names modules or parameters to freeze on top of the per-component switches (top-level
    `audio_tower`, `projector`, `language_model`, or any sub-module path; LoRA adapters inside a
    frozen module freeze too). `flags` maps "lora_llm" / "lora_encoder" (target modules) and
    "freeze" to the flag names quoted in errors. The LoRA settings are recorded in `model.config.lora` so a checkpoint
    can re-create the adapters.
    """
    flags = {
        "lora_llm": "LLM LoRA target_modules",
        "lora_encoder": "encoder LoRA target_modules",
        "freeze": "freeze list",
        **(flags or {}),
    }
    model.audio_tower.requires_grad_(not freeze_encoder)
    model.projector.requires_grad_(not freeze_projector)
    model.language_model.requires_grad_(not freeze_llm)
    if lora_llm is not None:
        model.language_model = _wrap_lora(model.language_model, lora_llm, "CAUSAL_LM", flags["lora_llm"])
        model.config.lora["llm"] = dataclasses.asdict(lora_llm)
    if lora_encoder is not None:
        model.audio_tower.model = _wrap_lora(
            model.audio_tower.model, lora_encoder, None, flags["lora_encoder"]
        )
        model.config.lora["encoder"] = dataclasses.asdict(lora_encoder)
    frozen = freeze_modules(model, freeze, flags["freeze"])
    # Only a fully frozen encoder is pinned to eval mode (no dropout / SpecAugment while training).
    model.audio_tower.frozen = (freeze_encoder and lora_encoder is None) or bool(
        {"audio_tower", "audio_tower.model"} & set(frozen)
    )
    model.audio_tower.train(model.training)
    return model


def _plain_name(name: str) -> str:
    """A module path without the wrapper levels peft inserts, as the user knows it."""
    return name.replace(".base_model.model", "")


def freeze_modules(model: torch.nn.Module, names: Sequence[str], flag: str = "freeze list") -> list[str]:
    """Freeze every named sub-module or parameter; a name that matches nothing is an error.

    Paths are those of `model.named_modules()` / `named_parameters()`, with or without the levels a
    LoRA wrapper adds (`language_model.model.layers.0` also finds the LoRA-wrapped layer). Returns
    the matched names as given.
    """
    modules = {}
    for name, module in model.named_modules():
        modules.setdefault(name, module)
        modules.setdefault(_plain_name(name), module)
    params = {}
    for name, param in model.named_parameters():
        params.setdefault(name, param)
        params.setdefault(_plain_name(name), param)
    matched = []
    for entry in (n.strip() for n in names):
        if not entry:
            continue
        if entry in modules:
            modules[entry].requires_grad_(False)
        elif entry in params:
            params[entry].requires_grad_(False)
        else:
            children = [n for n, _ in model.named_children()]
            raise ValueError(
                f"{flag}: {entry!r} matches no module or parameter of the model (top-level modules: "
                f"{children}; sub-modules by path, e.g. 'language_model.model.layers.0')"
            )
        matched.append(entry)
    return matched


def _wrap_lora(module: torch.nn.Module, settings: LoraSettings, task_type: str | None, what: str):
    from peft import LoraConfig, get_peft_model

    targets = list(settings.target_modules)
    if targets != ["all-linear"]:
        names = [n for n, _ in module.named_modules()]
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if unmatched:
            linear = sorted(
                {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
            )
            raise ValueError(
                f"{what}: {unmatched} match no module of the {type(module).__name__}; "
                f"its linear layers are named {linear}"
            )
    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # peft reads its "all-linear" shorthand only as a plain string; a one-item list is taken as a
        # module name that no model has.
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        bias=settings.bias,
        use_rslora=settings.use_rslora,
        task_type=task_type,
    )
    return get_peft_model(module, cfg)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts (each shared tensor counted once)."""
    seen: set[int] = set()
    trainable = frozen = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


def load_pretrained_model(
    model_path: str | os.PathLike,
    audio_encoder: str | None = None,
    llm: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[SpeechLlavaForCausalLM, PreTrainedTokenizerBase]:
    """Reassemble a full model from a checkpoint of trainable weights, frozen and in eval mode.

    The base encoder and LLM come from the paths recorded in the checkpoint unless `audio_encoder` /
    `llm` override them (e.g. the same checkpoint on another machine). A checkpoint trained with
    another LLM or encoder fails with a message naming the mismatching tensors.
    """
    config = read_config(model_path)
    if config.audio_config is not None:
        check_encoder_layer(
            config.encoder_layer, config.audio_config, f"{model_path}: config.json encoder_layer"
        )
    enc = audio_encoder or config.audio_encoder_name_or_path
    lm = llm or config.llm_name_or_path
    if enc is None or lm is None:
        raise ValueError(
            f"{model_path}: the checkpoint does not record where its base "
            f"{'encoder' if enc is None else 'LLM'} comes from; pass audio_encoder=/llm= (--audio-encoder/--llm)"
        )
    model, tokenizer = build_model(
        enc,
        lm,
        projector_type=config.projector_type,
        projector_config=config.projector_config,
        encoder_layer=config.encoder_layer,
        attn_implementation=attn_implementation,
        llm_dtype=dtype,
        encoder_dtype=dtype,
    )
    want = config.text_config.hidden_size if config.text_config is not None else None
    if want is not None and want != model.llm_hidden_size:
        raise ValueError(
            f"{model_path}: checkpoint was trained for an LLM of hidden size {want}, but {lm} has "
            f"{model.llm_hidden_size}"
        )
    lora = config.lora or {}
    apply_training_mode(
        model,
        freeze_encoder=True,
        freeze_projector=True,
        freeze_llm=True,
        lora_llm=LoraSettings(**lora["llm"]) if "llm" in lora else None,
        lora_encoder=LoraSettings(**lora["encoder"]) if "encoder" in lora else None,
    )
    # Whatever else was trained, a checkpoint must hold the projector and every LoRA adapter.
    needed = [n for n, _ in model.named_parameters() if n.startswith("projector.") or "lora_" in n]
    load_into(model, read_weights(model_path), source=str(model_path), expected=needed)
    model.to(device)
    if dtype is not None:
        model.projector.to(dtype)
    return model.eval(), tokenizer


def load_projector(
    model: SpeechLlavaForCausalLM, ckpt_dir: str | os.PathLike, allow_partial: bool = False
) -> list[str]:
    """Initialise the projector from a (stage-1) checkpoint, ignoring any other tensors in it.

    Every projector tensor must be in the checkpoint, or it is an error listing the missing ones;
    with `allow_partial` those keep their random initialisation, are logged one by one, and returned.
    """
    weights = read_weights(ckpt_dir, prefix="projector.")
    if not weights:
        raise ValueError(f"{ckpt_dir}: the checkpoint holds no projector weights")
    expected = [n for n, _ in model.projector.named_parameters(prefix="projector")]
    missing = sorted(set(expected) - set(weights))
    if missing and not allow_partial:
        raise ValueError(
            f"{ckpt_dir}: the checkpoint lacks {len(missing)} of the projector's {len(expected)} tensors "
            f"(was it trained with other projector settings?): {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}; --allow_partial_projector_init True starts from it "
            "anyway, leaving those tensors random"
        )
    load_into(model, weights, source=str(ckpt_dir), expected=expected, allow_missing=True)
    if missing:
        logger.warning(
            "projector partially initialised from %s: %d of %d tensors stay random: %s",
            ckpt_dir,
            len(missing),
            len(expected),
            ", ".join(missing),
        )
    return missing
