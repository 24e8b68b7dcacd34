"""Training settings from a YAML/JSON file and the command line together (the command line wins).

    python -m llava.train.train [CONFIG.yml] [--flag value ...]

The settings are the typed dataclasses of `llava.train.arguments`; some hold nested typed groups
(`ModelArguments.qformer`, `.lora`, `.encoder_lora`). Every setting has one flag, its flat name
(the original implementation's where one existed: `--mm_qformer_num_query_token`, `--lora_r`), and
answers to its dotted path as well (`--qformer.num_queries`, `--lora.r`).

A config file holds the same settings, flat or nested, optionally under the sections `model`,
`data`, `loss` and `training`:

    model:
      model_name_or_path: meta-llama/Llama-3.1-8B-Instruct
      qformer: {num_queries: 4, num_layers: 4}
      lora: {enable: true, r: 16, target_modules: [q_proj, v_proj]}   # or "q_proj,v_proj"
    loss:
      contrastive_training: true
      contrastive_layer: all
      contrastive_layer_weights: {0: 1.0, 32: 0.5}                     # or "0:1.0,32:0.5"
    training:
      learning_rate: 1.0e-4

Values go through the same parser as the command line (a file setting is a flag given before the
command-line ones), so both are checked alike; an unknown or duplicated key, or a bad value, is an
error naming the file and the key. `null` resets an optional setting to None.

Flags of the original implementation that have no setting of their own here (`--tune_audio_encoder`,
`--version`, `--lazy_preprocess`, ...) are accepted so its command lines run unchanged: see
`llava.train.arguments.OriginalFlags`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import sys
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from llava.train.arguments import (
    DataArguments,
    LossArguments,
    ModelArguments,
    OriginalFlags,
    TrainingArguments,
)

logger = logging.getLogger(__name__)

# Config-file sections and the settings group each one holds.
SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "loss": LossArguments,
    "training": TrainingArguments,
}
CONFIG_SUFFIXES = (".yml", ".yaml", ".json")


@dataclass(frozen=True)
class Setting:
    """One leaf setting: where it lives, its flag and every name it answers to."""

    section: str  # key of SECTIONS ("original" for OriginalFlags)
    path: tuple[str, ...]  # field path in the section's dataclass, e.g. ("qformer", "num_queries")
    dest: str  # its flag without "--" (the flat name)
    names: tuple[str, ...]  # dest, the dotted path and any aliases


def _flag_name(outer: dataclasses.Field | None, inner: dataclasses.Field) -> str:
    if "flag" in inner.metadata:
        return inner.metadata["flag"]
    if outer is None:
        return inner.name
    return outer.metadata.get("flag_prefix", f"{outer.name}_") + inner.name


def _aliases(f: dataclasses.Field) -> list[str]:
    return [a.lstrip("-") for a in f.metadata.get("aliases", [])]


def _is_group(cls: type, f: dataclasses.Field) -> bool:
    hint = typing.get_type_hints(cls).get(f.name)
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def settings_of(section: str, cls: type) -> list[Setting]:
    """The leaf settings of one group (nested groups flattened one level deep)."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if _is_group(cls, f):
            inner_cls = typing.get_type_hints(cls)[f.name]
            for g in dataclasses.fields(inner_cls):
                dest = _flag_name(f, g)
                names = (dest, f"{f.name}.{g.name}", *_aliases(g))
                out.append(Setting(section, (f.name, g.name), dest, tuple(dict.fromkeys(names))))
        else:
            names = (f.name, *_aliases(f))
            out.append(Setting(section, (f.name,), f.name, tuple(dict.fromkeys(names))))
    return out


def all_settings() -> list[Setting]:
    """Every setting of every section, with the renamed Trainer flags among their names."""
    out = [s for section, cls in SECTIONS.items() for s in settings_of(section, cls)]
    old_names = {new: old for old, new in RENAMED_FLAGS.items()}
    out = [
        dataclasses.replace(s, names=(*s.names, old_names[s.dest])) if s.dest in old_names else s for s in out
    ]
    return out + settings_of("original", OriginalFlags)


def _flat_dataclass(section: str, cls: type) -> type:
    """A flat twin of a settings group for `HfArgumentParser`: one field per leaf, named by its flag,
    answering to the other names as aliases."""
    hints = typing.get_type_hints(cls)
    fields = []
    for s in settings_of(section, cls):
        if len(s.path) == 1:
            outer, owner, name = None, cls, s.path[0]
            hint = hints[name]
        else:
            outer = next(f for f in dataclasses.fields(cls) if f.name == s.path[0])
            owner, name = hints[s.path[0]], s.path[1]
            hint = typing.get_type_hints(owner)[name]
        f = next(f for f in dataclasses.fields(owner) if f.name == name)
        if f.default is not MISSING:
            default = dataclasses.field(default=f.default)
        elif f.default_factory is not MISSING:
            default = dataclasses.field(default_factory=f.default_factory)
        else:
            default = dataclasses.field(default=(outer.default_factory() if outer else MISSING))
        metadata = {k: v for k, v in f.metadata.items() if k not in ("aliases", "flag")}
        metadata["aliases"] = [f"--{n}" for n in s.names if n != s.dest]
        default.metadata = metadata
        fields.append((s.dest, hint, default))
    return dataclasses.make_dataclass(f"Flat{cls.__name__}", fields)


def _nested(section: str, cls: type, flat: Any) -> Any:
    """The settings group `cls` built from its flat twin's values."""
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for s in settings_of(section, cls):
        value = getattr(flat, s.dest)
        if len(s.path) == 1:
            top[s.path[0]] = value
        else:
            groups.setdefault(s.path[0], {})[s.path[1]] = value
    hints = typing.get_type_hints(cls)
    for name, values in groups.items():
        top[name] = hints[name](**values)
    return cls(**top)


def build_parser(extra: Sequence[type] = (), **kwargs: Any) -> HfArgumentParser:
    """One parser for every training flag (plus the flags of `extra` dataclasses)."""
    flat = [_flat_dataclass(s, SECTIONS[s]) for s in ("model", "data", "loss")]
    return HfArgumentParser(
        (*flat, TrainingArguments, _flat_dataclass("original", OriginalFlags), *extra), **kwargs
    )


# ----------------------------------------------------------------------------------- config files
def read_config(path: str | Path) -> dict[str, Any]:
    """A settings file as a mapping (YAML, or JSON by suffix); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such training config file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _flatten(path: Path, data: dict, index: dict[str, Setting]) -> list[tuple[str, str | None, Any]]:
    """(key as written, section it was under, value) for every leaf of the file."""
    groups = {s.path[0] for s in index.values() if len(s.path) == 2}
    out = []

    def walk(mapping: dict, prefix: str, section: str | None) -> None:
        for key, value in mapping.items():
            key = str(key)
            if not prefix and section is None and key in SECTIONS and isinstance(value, dict):
                walk(value, "", key)
            elif not prefix and key in groups and isinstance(value, dict):
                walk(value, f"{key}.", section)
            else:
                out.append((prefix + key, section, value))

    walk(data, "", None)
    return out


def config_tokens(path: str | Path, parser: HfArgumentParser) -> tuple[list[str], dict[str, None]]:
    """A config file as command-line tokens (placed before the real ones, which therefore win) and
    the settings it resets to None."""
    path = Path(path)
    index = {name: s for s in all_settings() for name in s.names}
    tokens: list[str] = []
    nulls: dict[str, None] = {}
    seen: dict[str, str] = {}
    for key, section, value in _flatten(path, read_config(path), index):
        setting = index.get(key)
        if setting is None:
            close = difflib.get_close_matches(key, list(index), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(f"{path}: unknown setting {key!r}{hint}")
        if section is not None and setting.section not in (section, "original"):
            raise ValueError(f"{path}: {key!r} is a {setting.section} setting, not a {section} one")
        if setting.dest in seen:
            raise ValueError(f"{path}: {key!r} and {seen[setting.dest]!r} set the same setting")
        seen[setting.dest] = key
        if value is None:
            nulls[setting.dest] = None
            continue
        action = parser._option_string_actions[f"--{setting.dest}"]
        tokens += _to_tokens(setting.dest, value, action)
    return tokens, nulls


def _to_tokens(dest: str, value: Any, action: argparse.Action) -> list[str]:
    many = action.nargs in ("+", "*")
    if isinstance(value, dict):  # e.g. layer weights {0: 1.0, 5: 0.5} -> "0:1.0,5:0.5"
        value = ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if many:
            return [f"--{dest}", *map(str, value)]
        value = ",".join(map(str, value))  # e.g. LoRA targets [q_proj, v_proj] -> "q_proj,v_proj"
    return [f"--{dest}={value}"]


# ----------------------------------------------------------------------------------- entry point
def parse_training_args(argv: Sequence[str] | None = None, extra: Sequence[type] = ()) -> tuple:
    """`[CONFIG] [--flag value ...]` -> (ModelArguments, DataArguments, LossArguments,
    TrainingArguments, *instances of `extra`). Command-line flags override the config file."""
    argv = [_renamed(t) for t in (sys.argv[1:] if argv is None else argv)]
    tokens: list[str] = []
    nulls: dict[str, None] = {}
    parser = build_parser(extra)
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_SUFFIXES):
        path = argv.pop(0)
        tokens, nulls = config_tokens(path, parser)
        _check_values(path, tokens, extra)
    parser.set_defaults(**nulls)
    parsed = parser.parse_args_into_dataclasses([*tokens, *argv])
    model, data, loss = (_nested(s, SECTIONS[s], flat) for s, flat in zip(("model", "data", "loss"), parsed))
    training, original, rest = parsed[3], parsed[4], parsed[5:]
    apply_original_flags(original, model, data, loss, training)
    return (model, data, loss, training, *rest)


# Flags the Trainer has renamed since the original scripts were written: old name -> new name.
RENAMED_FLAGS = {"evaluation_strategy": "eval_strategy"}


def _renamed(token: str) -> str:
    name, sep, value = token.partition("=")
    if name.startswith("--") and name[2:] in RENAMED_FLAGS:
        return f"--{RENAMED_FLAGS[name[2:]]}{sep}{value}"
    return token


def _check_values(path: str, tokens: list[str], extra: Sequence[type]) -> None:
    """Parse the file's settings alone first, so a bad value is reported against the file."""
    checker = build_parser(extra, exit_on_error=False)
    try:
        checker.parse_known_args(tokens)
    except argparse.ArgumentError as e:
        name = (e.argument_name or "").split("/")[0].lstrip("-")
        raise ValueError(f"{path}: {name}: {e.message}") from None


def apply_original_flags(
    original: OriginalFlags,
    model: ModelArguments,
    data: DataArguments,
    loss: LossArguments,
    training: TrainingArguments,
) -> None:
    """Map the original implementation's extra flags onto our settings (see `OriginalFlags`)."""
    given = {f.name: getattr(original, f.name) for f in dataclasses.fields(original)}
    given = {k: v for k, v in given.items() if v is not None}
    for name, value in given.items():
        rule = OriginalFlags.RULES[name]
        if "accepts" in rule and value not in rule["accepts"]:
            raise ValueError(
                f"--{name} {value!r}: {rule['why']} (accepted: {sorted(map(str, rule['accepts']))})"
            )
    if "tune_audio_encoder" in given:
        model.freeze_audio_encoder = not given["tune_audio_encoder"]
    if "freeze_mm_mlp_adapter" in given:
        model.tune_mm_mlp_adapter = not given["freeze_mm_mlp_adapter"]
    if given.get("contrastive_combine_loss"):
        if data.audio_nwp:
            loss.contr_asr_combine_loss = True
        else:
            logger.warning(
                "--contrastive_combine_loss has no effect without --audio_nwp (as in the original)"
            )
    for name in given:
        rule = OriginalFlags.RULES[name]
        if rule.get("ignored"):
            logger.warning(
                "--%s is accepted for the original scripts but has no effect here: %s", name, rule["why"]
            )
