"""The model card (README.md) of an export: what the model is, how to call it, how it was trained and scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llava.dataset.prompts import PAPER_SYSTEM_PROMPT
from llava.eval.metrics import HEADLINE_KEYS

__all__ = ["SCORE_KEYS", "model_card"]

# Headline metrics of `{stem}_scores.json`, in table order (the names llava.eval writes).
SCORE_KEYS = HEADLINE_KEYS


def _millions(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.1f} M parameters" if n >= 100_000 else f"{n:,} parameters"


def _hub_id(value: str | None) -> str | None:
    """`value` when it reads like a Hub id (owner/name) rather than a local path."""
    if not value or Path(value).exists() or value.startswith((".", "/", "~")) or value.count("/") != 1:
        return None
    return value


def _front_matter(config: Any) -> str:
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: audio-text-to-text",
        "tags:",
        "- speech-llava",
        "- speech",
        "- audio",
    ]
    bases = [b for b in (_hub_id(config.audio_encoder_name_or_path), _hub_id(config.llm_name_or_path)) if b]
    if bases:
        lines += ["base_model:"] + [f"- {b}" for b in bases]
    return "\n".join(lines + ["---", ""])


def _usage(name: str) -> str:
    return f"""## Use

```python
import llava  # registers speech-llava with the transformers Auto classes (no trust_remote_code)
import soundfile as sf
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{name}")
processor = AutoProcessor.from_pretrained("{name}")
wave, rate = sf.read("clip.wav", dtype="float32")
messages = [
    {{"role": "system", "content": "{PAPER_SYSTEM_PROMPT}"}},
    {{"role": "user", "content": "<audio>\\nTranscribe the audio."}},
]
prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = processor(text=prompt, audio=wave, sampling_rate=rate)
new_tokens = model.generate(**inputs, max_new_tokens=200, do_sample=False)
print(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])
```

Served behind an OpenAI-compatible API: `python -m llava.serve.api --model-path {name}`.
"""


def _scores_table(scores: dict[str, dict[str, Any]]) -> str:
    if not scores:
        return "No evaluation scores were found beside the checkpoint.\n"
    keys = [k for k in SCORE_KEYS if any(isinstance(s.get(k), int | float) for s in scores.values())]
    head = ["test set", "task", *keys, "utterances"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem, s in sorted(scores.items()):
        cells = [stem, str(s.get("task", ""))]
        cells += [f"{s[k]:.2f}" if isinstance(s.get(k), int | float) else "" for k in keys]
        cells.append(str(s.get("num_predictions", s.get("num_references", ""))))
        rows.append("| " + " | ".join(cells) + " |")
    notes = (
        "\n`wer_paper` is the paper's WER (mean of per-utterance WERs after lower-casing and deleting "
        "punctuation); `wer_corpus` the corpus-level WER. Settings of each run are in its scores file.\n"
    )
    return "\n".join(rows) + "\n" + (notes if "wer_paper" in keys else "")


def _training(config: Any, lora: dict, merged: bool, training: dict[str, Any]) -> str:
    settings = {
        "encoder": config.audio_encoder_name_or_path,
        "encoder_layer": config.encoder_layer,
        "llm": config.llm_name_or_path,
        "projector_type": config.projector_type,
        "projector_config": config.projector_config,
    }
    if lora:
        settings["lora"] = {**lora, "in_export": "merged into the weights" if merged else "kept as adapters"}
    parts = [
        "## Training configuration",
        "",
        "From the checkpoint's `config.json`:",
        "",
        "```json",
        json.dumps(settings, indent=2, ensure_ascii=False, default=str),
        "```",
    ]
    state = training.get("trainer_state")
    if state:
        parts += ["", "Trainer state: " + ", ".join(f"{k} = {v}" for k, v in state.items()) + "."]
    for fname, text in (training.get("files") or {}).items():
        lang = "json" if fname.endswith(".json") else "yaml"
        parts += ["", f"`{fname}`:", "", f"```{lang}", text.rstrip(), "```"]
    return "\n".join(parts) + "\n"


def model_card(
    model: Any,
    *,
    name: str,
    source: Path,
    merged_lora: bool,
    lora: dict,
    dtype: torch.dtype,
    training: dict[str, Any],
    scores: dict[str, dict[str, Any]],
    processor: Any,
) -> str:
    """The README.md of an export (YAML front matter + Markdown)."""
    config = model.config
    rate = processor.sampling_rate
    per_second = processor.num_audio_tokens(rate * 10) / 10
    enc_type = config.audio_config.model_type if config.audio_config is not None else "?"
    llm_type = config.text_config.model_type if config.text_config is not None else "?"
    summary = (
        f"# {name}\n\n"
        f"A speech LLM built with speech-llava: a {enc_type} speech encoder "
        f"(`{config.audio_encoder_name_or_path}`, hidden state {config.encoder_layer}, "
        f"{_millions(model.audio_tower)}) feeds a `{config.projector_type}` projector "
        f"({_millions(model.projector)}) whose outputs replace the `<audio>` placeholder in the input of a "
        f"{llm_type} LLM (`{config.llm_name_or_path}`, {_millions(model.language_model)}). "
        f"Audio at {rate} Hz becomes about {per_second:.1f} LLM positions per second. "
        f"Weights: {str(dtype).removeprefix('torch.')}, exported from `{source.name}`.\n"
    )
    prompt = (
        "## Prompt layout\n\n"
        "The paper's layout (`--prompt_format original`, the default of the training scripts): the system "
        f'turn "{PAPER_SYSTEM_PROMPT}" and the user turn `<audio>\\n{{instruction}}`, e.g. '
        "`<audio>\\nTranscribe the audio.` (spoken QA: `<audio>\\n{instruction} {question}`). A model "
        "trained with another `--prompt_format` expects that layout instead.\n"
    )
    files = (
        "## Files\n\n"
        "`config.json` (SpeechLlavaConfig with the encoder and LLM configs), `model*.safetensors`, "
        "`generation_config.json`, the tokenizer files with `<audio>` and the chat template, "
        "`preprocessor_config.json` (feature extractor), `processor_config.json` (SpeechLlavaProcessor, "
        "including the rule that sizes each `<audio>` run).\n"
    )
    return "\n".join(
        [
            _front_matter(config),
            summary,
            _usage(name),
            prompt,
            _training(config, lora, merged_lora, training),
            "## Evaluation\n\n" + _scores_table(scores),
            files,
        ]
    )
