"""A standalone Hugging Face directory from a checkpoint: `python -m llava.export`.

    python -m llava.export --model-path checkpoints/finetune --out exports/speech-llava [--merge-lora]
        [--dtype bf16] [--overwrite] [--max-shard-size 5GB] [--scores results/*_scores.json]

A checkpoint holds only the trained tensors and needs the base encoder and LLM to be loaded; the
export holds everything and loads with nothing but `transformers` and `import llava`:

    config.json                    SpeechLlavaConfig with the encoder and LLM sub-configs,
                                   checkpoint_format "full" and the feature-extractor settings
    model-*.safetensors (+ index)  encoder + projector + LLM weights (LoRA adapters merged with
                                   --merge-lora, else kept as adapters the config re-creates)
    generation_config.json         the LLM's generation settings
    tokenizer files                the LLM's tokenizer with <audio> and its chat template
    preprocessor_config.json       the encoder's feature extractor
    processor_config.json          SpeechLlavaProcessor: (text with <audio>, waveform) -> model inputs
    README.md                      model card: the model, the prompt layout, the training
                                   configuration and any evaluation scores found beside the checkpoint

`from_pretrained(DIR)` generates the same tokens as the checkpoint it came from (in the same dtype).
The directory is written beside its destination and moved into place when complete; an existing
destination is refused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llava.export.card import model_card
from llava.model.builder import DTYPES
from llava.model.pretrained import base_language_model, checkpoint_format, load_for_inference
from llava.model.processing import SpeechLlavaProcessor

__all__ = ["EXPORT_DTYPES", "export", "find_scores", "main"]

logger = logging.getLogger("llava.export")

# --dtype names (the short ones are the usual spellings).
EXPORT_DTYPES: dict[str, torch.dtype] = {
    **DTYPES,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def export_dtype(name: str) -> torch.dtype:
    """`--dtype` name -> torch dtype; ValueError listing the known names."""
    try:
        return EXPORT_DTYPES[name]
    except KeyError:
        raise ValueError(f"--dtype {name!r}: expected one of {sorted(EXPORT_DTYPES)}") from None


def check_paths(model_path: Path, out: Path, overwrite: bool) -> None:
    """Everything about the two directories that can be checked before loading (clear errors)."""
    if not model_path.is_dir():
        raise ValueError(f"--model-path {model_path}: not a directory")
    checkpoint_format(model_path)  # a speech-llava config.json, or a clear error
    if model_path.resolve() == out.resolve() or model_path.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out}: must lie outside the checkpoint directory {model_path}")
    if out.resolve() in model_path.resolve().parents:
        raise ValueError(f"--out {out}: contains the checkpoint {model_path}; choose another directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")


def find_scores(model_path: Path, extra: Sequence[str | Path] = ()) -> dict[str, dict[str, Any]]:
    """Evaluation scores beside the checkpoint: `*_scores.json` in it and one folder down, plus `extra`.

    Keyed by test-set stem; an unreadable file is logged and skipped (it only feeds the model card).
    """
    paths = sorted(model_path.glob("*_scores.json")) + sorted(model_path.glob("*/*_scores.json"))
    paths += [Path(p) for p in extra]
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s: not read (%s)", path, exc)
            continue
        if isinstance(data, dict):
            found[str(data.get("stem") or path.name.removesuffix("_scores.json"))] = data
    return found


def training_record(model_path: Path) -> dict[str, Any]:
    """What the checkpoint directory tells about its training: the trainer state's summary and any
    YAML/JSON argument files (files only read, never executed or unpickled)."""
    import yaml

    record: dict[str, Any] = {}
    state = model_path / "trainer_state.json"
    if state.is_file():
        try:
            data = json.loads(state.read_text(encoding="utf-8"))
            losses = [e["loss"] for e in data.get("log_history", []) if "loss" in e]
            record["trainer_state"] = {
                k: data[k]
                for k in ("global_step", "epoch", "max_steps", "num_train_epochs", "train_batch_size")
                if k in data
            }
            if losses:
                record["trainer_state"]["last_logged_loss"] = losses[-1]
        except (OSError, ValueError) as exc:
            logger.warning("%s: not read (%s)", state, exc)
    for path in sorted(model_path.glob("*.y*ml")) + sorted(model_path.glob("*args*.json")):
        try:
            text = path.read_text(encoding="utf-8")
            yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
            logger.warning("%s: not read (%s)", path, exc)
            continue
        record.setdefault("files", {})[path.name] = text
    return record


def export(
    model_path: str | Path,
    out: str | Path,
    *,
    merge_lora: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    audio_encoder: str | None = None,
    llm: str | None = None,
    max_shard_size: str | int = "5GB",
    scores: Sequence[str | Path] = (),
    name: str | None = None,
) -> Path:
    """Write the standalone directory of `model_path` (a checkpoint or an export) to `out`."""
    model_path, out = Path(model_path), Path(out)
    check_paths(model_path, out, overwrite)
    model, tokenizer = load_for_inference(model_path, audio_encoder=audio_encoder, llm=llm)
    lora = dict(model.config.lora or {})
    if merge_lora and lora:
        if "llm" in lora:
            model.language_model = model.language_model.merge_and_unload()
        if "encoder" in lora:
            model.audio_tower.model = model.audio_tower.model.merge_and_unload()
        model.config.lora = {}
        logger.info("LoRA adapters merged into the weights: %s", sorted(lora))
    elif merge_lora:
        logger.info("--merge-lora: the checkpoint has no LoRA adapters; nothing to merge")
    if dtype is not None:
        model.to(dtype)
    model.config.audio_feature_extractor = model.audio_tower.feature_extractor.to_dict()
    processor = SpeechLlavaProcessor.from_model(model, tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp, trainable_only=False, max_shard_size=max_shard_size)
        processor.save_pretrained(tmp)
        processor.feature_extractor.save_pretrained(tmp)  # preprocessor_config.json for AutoFeatureExtractor
        card = model_card(
            model,
            name=name or out.name,
            source=model_path,
            merged_lora=bool(merge_lora and lora),
            lora=lora,
            dtype=next(base_language_model(model).parameters()).dtype,
            training=training_record(model_path),
            scores=find_scores(model_path, scores),
            processor=processor,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m llava.export",
        description="Write a standalone Hugging Face directory (weights, tokenizer, processor, model card).",
    )
    p.add_argument("--model-path", "--model_path", required=True, help="checkpoint directory (or an export)")
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--merge-lora", action="store_true", help="merge LoRA adapters into the weights")
    p.add_argument("--dtype", default=None, help=f"cast the weights: one of {sorted(EXPORT_DTYPES)}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.add_argument("--audio-encoder", default=None, help="override the base encoder the checkpoint records")
    p.add_argument("--llm", default=None, help="override the base LLM the checkpoint records")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 2GB)")
    p.add_argument("--scores", nargs="*", default=[], help="more *_scores.json files for the model card")
    p.add_argument("--name", default=None, help="model name in the card (default: the --out folder name)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # everything that can fail before loading fails here
        dtype = export_dtype(args.dtype) if args.dtype else None
        check_paths(Path(args.model_path), Path(args.out), args.overwrite)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    out = export(
        args.model_path,
        args.out,
        merge_lora=args.merge_lora,
        dtype=dtype,
        overwrite=args.overwrite,
        audio_encoder=args.audio_encoder,
        llm=args.llm,
        max_shard_size=args.max_shard_size,
        scores=args.scores,
        name=args.name,
    )
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(json.dumps({"out": str(out), "bytes": size, "files": files}))
    return 0
