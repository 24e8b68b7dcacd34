"""`SpeechLlavaForCausalLM` through the `transformers` API: `from_pretrained`, `save_pretrained`.

Two on-disk formats share one `config.json` (`SpeechLlavaConfig.checkpoint_format` tells them apart):

- **trainable** (the default, and every checkpoint written before the field existed): the trained
  tensors only (projector, LoRA adapters) in `model.safetensors`; loading reassembles the model from
  the base encoder and LLM whose paths the config records (`llava.model.builder.load_pretrained_model`,
  with `audio_encoder=` / `llm=` to override them).
- **full** (`python -m llava.export`, or `save_pretrained(..., trainable_only=False)`): every weight in
  safetensors shards, loaded by `PreTrainedModel.from_pretrained` itself (`dtype`, `device_map`, ...
  work as for any model). A model built from the config alone re-creates the recorded LoRA adapters
  and feature-extractor settings, so the weights fit it exactly; a missing or unexpected tensor is an
  error, never a silent random initialisation.

The helpers here are called by the class's own methods; nothing else needs them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from llava.model.checkpoint import save_trainable
from llava.model.configuration import SpeechLlavaConfig
from llava.model.encoders import AudioEncoder

__all__ = [
    "HUB_KWARGS",
    "audio_tower_from_config",
    "base_language_model",
    "checkpoint_format",
    "feature_extractor_from_dict",
    "from_pretrained",
    "load_for_inference",
    "save_pretrained",
    "tie_weights",
    "wrap_lora_from_config",
]

# `from_pretrained` keywords that only say where files come from.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
# Keywords the Auto classes and pipelines add, with no bearing on a trainable-only checkpoint.
_PLUMBING_KWARGS = (
    "config",
    "trust_remote_code",
    "use_safetensors",
    "_from_auto",
    "_from_pipeline",
    "code_revision",
)


# ----------------------------------------------------------------------------------------- building
def feature_extractor_from_dict(settings: dict[str, Any]):
    """A feature extractor from its `to_dict()` (its class named by `feature_extractor_type`)."""
    from transformers.models.auto.feature_extraction_auto import feature_extractor_class_from_name

    name = settings.get("feature_extractor_type")
    cls = feature_extractor_class_from_name(name) if name else None
    if cls is None:
        raise ValueError(
            f"SpeechLlavaConfig.audio_feature_extractor: unknown feature_extractor_type {name!r}"
        )
    return cls.from_dict(dict(settings))


def audio_tower_from_config(config: SpeechLlavaConfig, attn_implementation: str) -> AudioEncoder:
    """The encoder of `config.audio_config` (random weights), featurising as the config records."""
    tower = AudioEncoder.from_config(
        config.audio_config, layer=config.encoder_layer, attn_implementation=attn_implementation
    )
    if config.audio_feature_extractor:
        tower.feature_extractor = feature_extractor_from_dict(config.audio_feature_extractor)
    return tower


def wrap_lora_from_config(model: nn.Module) -> None:
    """Wrap the LLM / encoder with the LoRA adapters `model.config.lora` records (no freezing)."""
    lora = model.config.lora or {}
    if not lora:
        return
    from llava.model.builder import LoraSettings, apply_training_mode

    unknown = sorted(set(lora) - {"llm", "encoder"})
    if unknown:
        raise ValueError(f"SpeechLlavaConfig.lora: unknown components {unknown}; known: ['encoder', 'llm']")
    apply_training_mode(
        model,
        freeze_encoder=False,
        freeze_projector=False,
        freeze_llm=False,
        lora_llm=LoraSettings(**lora["llm"]) if "llm" in lora else None,
        lora_encoder=LoraSettings(**lora["encoder"]) if "encoder" in lora else None,
        flags={"lora_llm": "SpeechLlavaConfig.lora.llm", "lora_encoder": "SpeechLlavaConfig.lora.encoder"},
    )


def base_language_model(model: nn.Module) -> PreTrainedModel:
    """The LLM without a LoRA wrapper around it."""
    lm = model.language_model
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def tied_weights_keys(model: nn.Module) -> dict[str, str]:
    """Tied parameter names -> their source, as paths in `model`.

    `post_init` prefixes each child's own mapping with the child's name, which is wrong once a LoRA
    wrapper sits between the model and the LLM (`language_model.base_model.model.lm_head`): the paths
    are taken from where each sub-model really is instead.
    """
    keys: dict[str, str] = {}
    for path, module in model.named_modules():
        if module is model or not isinstance(module, PreTrainedModel):
            continue
        for k, v in (getattr(module, "all_tied_weights_keys", None) or {}).items():
            keys[f"{path}.{k}"] = f"{path}.{v}"
    return keys


def tie_weights(model: PreTrainedModel) -> None:
    """Tie the sub-models' weights (e.g. an LLM's input and output embeddings) at their real paths."""
    model.all_tied_weights_keys = tied_weights_keys(model)
    model.tie_weights(recompute_mapping=False)


# ----------------------------------------------------------------------------------------- saving
@contextlib.contextmanager
def _format(config: SpeechLlavaConfig, fmt: str) -> Iterator[None]:
    previous = config.checkpoint_format
    config.checkpoint_format = fmt
    try:
        yield
    finally:
        config.checkpoint_format = previous


def save_pretrained(
    model: PreTrainedModel,
    save_directory: str | os.PathLike,
    *args: Any,
    trainable_only: bool = True,
    **kwargs: Any,
) -> None:
    """Write `model` to `save_directory`.

    `trainable_only=True` (default): the trainable-only checkpoint (`llava.model.checkpoint`: the
    parameters that require grad, plus config.json). `trainable_only=False`: every weight, in
    `transformers`' sharded safetensors format (`max_shard_size=` etc. as for any model), plus the
    LLM's generation config.
    """
    if trainable_only:
        is_main = kwargs.pop("is_main_process", True)
        kwargs.pop("safe_serialization", None)  # always safetensors
        if args or kwargs:
            raise TypeError(
                f"save_pretrained: {sorted(kwargs) or 'positional arguments'} apply to the full format only "
                "(trainable_only=False)"
            )
        if is_main:
            with _format(model.config, "trainable"):
                save_trainable(model, save_directory)
        return
    with _format(model.config, "full"):
        model._save_full(save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        base_language_model(model).generation_config.save_pretrained(save_directory)


# ----------------------------------------------------------------------------------------- loading
def read_config_dict(path: Path) -> dict[str, Any]:
    """A config.json as a dict; ValueError naming the file when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def checkpoint_format(path: str | os.PathLike, **hub_kwargs: Any) -> str:
    """The `checkpoint_format` of the config at `path` ("trainable" when the field is absent)."""
    if Path(path).is_dir() and not hub_kwargs.get("subfolder"):
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a speech-llava checkpoint or export (no config.json)")
        data = read_config_dict(Path(path) / "config.json")
    else:
        try:
            data, _ = PretrainedConfig.get_config_dict(str(path), **hub_kwargs)
        except OSError as exc:
            raise OSError(f"{path}: not a speech-llava checkpoint or export ({exc})") from None
    if data.get("model_type") != SpeechLlavaConfig.model_type:
        raise ValueError(
            f"{path}: config.json model_type is {data.get('model_type')!r}, expected "
            f"{SpeechLlavaConfig.model_type!r}"
        )
    return data.get("checkpoint_format", "trainable")


def _dtype(value: Any) -> torch.dtype | None:
    from llava.model.builder import DTYPES

    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return None if value == torch.float32 else value
    if isinstance(value, str) and value in DTYPES:
        return None if value == "float32" else DTYPES[value]
    raise ValueError(
        f"from_pretrained: dtype {value!r}: expected 'auto', a torch dtype or one of {list(DTYPES)}"
    )


def _device(value: Any) -> str | torch.device:
    if value is None:
        return "cpu"
    if isinstance(value, torch.device):
        return value
    if isinstance(value, int):
        return torch.device("cuda", value)
    if isinstance(value, str) and value not in ("auto", "balanced", "balanced_low_0", "sequential"):
        return value
    raise NotImplementedError(
        f"from_pretrained: device_map={value!r} needs a full export; a trainable-only checkpoint loads on "
        "one device (device_map='cuda:0', 'cpu', ...). Export it with `python -m llava.export`."
    )


def _load_trainable(path: str | os.PathLike, model_args: tuple, kwargs: dict[str, Any]):
    from llava.model.builder import load_pretrained_model

    if model_args:
        raise TypeError("from_pretrained: a trainable-only checkpoint takes no positional model arguments")
    if not Path(path).is_dir():
        raise ValueError(
            f"{path}: a trainable-only checkpoint is read from a local directory (download it first), "
            "or export it with `python -m llava.export` for the full format"
        )
    want_info = kwargs.pop("output_loading_info", False)
    audio_encoder, llm = kwargs.pop("audio_encoder", None), kwargs.pop("llm", None)
    dtype = _dtype(kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None))
    device = _device(kwargs.pop("device_map", None))
    attn = kwargs.pop("attn_implementation", None) or "sdpa"
    for key in (*HUB_KWARGS, *_PLUMBING_KWARGS):
        kwargs.pop(key, None)
    if kwargs.get("adapter_kwargs") in (None, {}) or set(kwargs["adapter_kwargs"]) <= {"revision", "token"}:
        kwargs.pop("adapter_kwargs", None)  # the Auto classes pass it along even when there is no adapter
    if kwargs:
        raise TypeError(
            f"from_pretrained({path}): {sorted(kwargs)} are not supported for a trainable-only checkpoint "
            "(reassembled by llava.model.builder.load_pretrained_model); export it with "
            "`python -m llava.export` to load it with every transformers option"
        )
    model, _ = load_pretrained_model(
        path, audio_encoder=audio_encoder, llm=llm, device=device, dtype=dtype, attn_implementation=attn
    )
    info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return (model, info) if want_info else model


def _load_full(cls: type, path: str | os.PathLike, model_args: tuple, kwargs: dict[str, Any]):
    want_info = kwargs.pop("output_loading_info", False)
    for key in ("audio_encoder", "llm"):
        if kwargs.pop(key, None) is not None:
            raise TypeError(
                f"from_pretrained: {key}= replaces a base model of a trainable-only checkpoint; {path} is a "
                "full export that holds every weight"
            )
    model, info = cls._from_pretrained_full(path, *model_args, output_loading_info=True, **kwargs)
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing {sorted(info['missing_keys'])[:10]}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected {sorted(info['unexpected_keys'])[:10]}")
    if info.get("mismatched_keys"):
        problems.append(f"shape mismatch {sorted(info['mismatched_keys'])[:10]}")
    if problems:
        raise ValueError(
            f"{path}: the weights do not fit the model its config.json describes: " + "; ".join(problems)
        )
    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    try:
        base_language_model(model).generation_config = GenerationConfig.from_pretrained(str(path), **hub)
    except OSError:
        pass  # no generation_config.json: the LLM config's defaults stand
    # The live model saves in the default (trainable) format unless told otherwise.
    model.config.checkpoint_format = "trainable"
    return (model, info) if want_info else model


def from_pretrained(
    cls: type, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
):
    """Load a trainable-only checkpoint or a full export (see the module docs).

    Trainable-only: `audio_encoder=` / `llm=` override the recorded base models; `dtype`,
    `device_map` (one device) and `attn_implementation` are honoured; the model comes back frozen in
    eval mode, as `load_pretrained_model` returns it. Full export: every `PreTrainedModel.from_pretrained`
    option; a weight the model lacks or does not find is an error.
    """
    config = kwargs.get("config")
    if isinstance(config, SpeechLlavaConfig):
        fmt = config.checkpoint_format
    else:
        fmt = checkpoint_format(
            pretrained_model_name_or_path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        )
    if fmt == "trainable":
        return _load_trainable(pretrained_model_name_or_path, model_args, kwargs)
    return _load_full(cls, pretrained_model_name_or_path, model_args, kwargs)


def load_for_inference(
    path: str | os.PathLike,
    *,
    audio_encoder: str | None = None,
    llm: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, Any]:
    """A checkpoint or a full export with its tokenizer, frozen, in eval mode, on `device`.

    Trainable-only checkpoints go through `load_pretrained_model` (base models from the recorded
    paths, or `audio_encoder` / `llm`); full exports through `from_pretrained` and the tokenizer saved
    beside the weights. `dtype` None keeps float32.
    """
    from transformers import AutoTokenizer

    from llava.model.builder import load_pretrained_model
    from llava.model.modeling import SpeechLlavaForCausalLM
    from llava.tokenization import add_audio_token, ensure_pad_token

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: not a directory (expected a speech-llava checkpoint or export)")
    if checkpoint_format(path) == "trainable":
        return load_pretrained_model(
            path,
            audio_encoder=audio_encoder,
            llm=llm,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
        )
    model = SpeechLlavaForCausalLM.from_pretrained(
        path,
        audio_encoder=audio_encoder,
        llm=llm,
        dtype=dtype or torch.float32,
        attn_implementation=attn_implementation,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if add_audio_token(tokenizer) != model.config.audio_token_id:
        raise ValueError(f"{path}: the tokenizer's <audio> id differs from config.json audio_token_id")
    ensure_pad_token(tokenizer)
    model.requires_grad_(False)
    model.audio_tower.frozen = True
    return model.to(device).eval(), tokenizer
