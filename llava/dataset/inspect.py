"""Show what the model is trained on: the first N training samples, formatted exactly as training does.

    python -m llava.dataset.inspect --data_config_path scripts/data_configs/finetune_mixed_tasks.yml \
        --model_name_or_path meta-llama/Llama-3.1-8B-Instruct --audio_encoder facebook/hubert-large-ls960-ft \
        [--prompt_format original] [--audio_nwp True] [--contrastive_training True] [--num_samples 5] [--json]

It takes the flags of `llava.train.train` (the same argument dataclasses, so a script's command line
works unchanged) plus `--num_samples`, `--destination` and `--json`. Only the tokenizer and the model
*configs* are read: the number of LLM positions an audio segment becomes is computed from the encoder
config, its feature extractor and the projector settings, without loading any weights.

Text output, per sample: its id and task, then the decoded input sequence with each run of audio
positions shown as one `<audio>` and every labelled span (what the loss is computed on) between
`[[` and `]]`; with a contrastive objective also the transcript side. `--json` prints one object per
line: `id`, `task`, `input_ids` (each audio run collapsed to a single -300, the original code's audio
index), `labels` (the same positions; -100 where nothing is learned) and `text_input_ids` (the
contrastive text side, or null).

This is a command-line leaf: it imports the training and model packages inside `main` only, so the
data package itself never depends on them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llava.constants import IGNORE_INDEX

# The original code's index for an audio position in input_ids (LLaVA's IMAGE_TOKEN_INDEX convention).
AUDIO_INDEX = -300
LABEL_OPEN, LABEL_CLOSE = "[[", "]]"


@dataclass
class InspectArguments:
    # How many samples to show (from the start of the destination, in dataset order).
    num_samples: int = field(default=5, metadata={"aliases": ["-n"]})
    # Which destination of the data config: train | eval.
    destination: str = "train"
    # One JSON object per line (id, task, input_ids, labels, text_input_ids) instead of text.
    json: bool = False


def collapse_audio_runs(
    input_ids: Sequence[int], labels: Sequence[int] | None, audio_token_id: int
) -> tuple[list[int], list[int] | None]:
    """Replace each run of `audio_token_id` by one AUDIO_INDEX (and its labels by one IGNORE_INDEX)."""
    ids_out: list[int] = []
    labels_out: list[int] | None = [] if labels is not None else None
    for pos, tok in enumerate(input_ids):
        if tok == audio_token_id:
            if pos and input_ids[pos - 1] == audio_token_id:
                continue  # inside a run: already stands as one AUDIO_INDEX
            ids_out.append(AUDIO_INDEX)
            if labels_out is not None:
                labels_out.append(IGNORE_INDEX)
        else:
            ids_out.append(int(tok))
            if labels_out is not None:
                labels_out.append(int(labels[pos]))
    return ids_out, labels_out


def render(decode: Callable[[list[int]], str], input_ids: Sequence[int], labels: Sequence[int] | None) -> str:
    """Decoded text of a collapsed sequence: `<audio>` per audio run, labelled spans between [[ ]]."""
    out: list[str] = []
    run: list[int] = []
    run_labelled = False

    def flush() -> None:
        if run:
            text = decode(run)
            out.append(f"{LABEL_OPEN}{text}{LABEL_CLOSE}" if run_labelled else text)
            run.clear()

    for pos, tok in enumerate(input_ids):
        if tok == AUDIO_INDEX:
            flush()
            out.append("<audio>")
            continue
        labelled = labels is not None and labels[pos] != IGNORE_INDEX
        if run and labelled != run_labelled:
            flush()
        run_labelled = labelled
        run.append(int(tok))
    flush()
    return "".join(out)


def audio_token_counter(
    audio_encoder: str, llm: str, projector_type: str, projector_config: dict[str, Any], layer: int = -1
) -> tuple[Callable[[int], int], int]:
    """(audio samples -> LLM positions, the encoder's sampling rate) from configs only, no weights.

    The encoder and projector modules are built on the meta device (shapes, no memory), so the count
    comes from the same `frame_lengths` / `output_lengths` code the real model uses.
    """
    import torch
    from transformers import AutoConfig, AutoFeatureExtractor

    from llava.model.encoders import AudioEncoder
    from llava.model.projectors import build_projector

    enc_config = AutoConfig.from_pretrained(audio_encoder)
    llm_config = AutoConfig.from_pretrained(llm)
    llm_config = getattr(llm_config, "text_config", None) or llm_config
    try:
        extractor = AutoFeatureExtractor.from_pretrained(audio_encoder)
    except (OSError, ValueError):
        extractor = None  # AudioEncoder falls back to the default extractor of the architecture
    with torch.device("meta"):
        encoder = AudioEncoder.from_config(enc_config, layer=layer)
        if extractor is not None:
            encoder.feature_extractor = extractor
        projector = build_projector(
            projector_type, projector_config, encoder.hidden_size, llm_config.hidden_size, encoder.frame_rate
        )

    def count(num_samples: int) -> int:
        frames = encoder.frame_lengths(torch.tensor([int(num_samples)]))
        return int(projector.output_lengths(frames)[0])

    return count, encoder.sampling_rate


def main(argv: list[str] | None = None) -> int:
    """Parse the training flags (+ inspect's own), build dataset and collator as training does, print."""
    from transformers import AutoConfig, AutoTokenizer

    from llava.dataset.config import load_data_config
    from llava.tokenization import add_audio_token, ensure_pad_token
    from llava.train.objectives import build_objective
    from llava.train.parsing import parse_training_args
    from llava.train.train import build_collator, build_datasets, prompt_settings

    model_args, data_args, loss_args, training_args, args = parse_training_args(
        argv, extra=(InspectArguments,)
    )
    if args.destination not in ("train", "eval"):
        raise ValueError(f"--destination {args.destination!r}: expected train or eval")
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {args.num_samples}")
    data_config = load_data_config(data_args.data_config_path)
    prompts = prompt_settings(data_args, data_config)
    llm_config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    num_layers = (getattr(llm_config, "text_config", None) or llm_config).num_hidden_layers
    objective = build_objective(loss_args, data_args, num_layers)

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    audio_token_id = add_audio_token(tokenizer)
    ensure_pad_token(tokenizer)
    count, sampling_rate = audio_token_counter(
        model_args.audio_encoder,
        model_args.model_name_or_path,
        model_args.mm_speech_projector_type,
        model_args.projector_config(),
        model_args.mm_speech_select_layer,
    )
    train_ds, eval_ds = build_datasets(data_args, training_args, data_config, sampling_rate)
    ds = train_ds if args.destination == "train" else eval_ds
    if ds is None:
        raise ValueError(f"{data_config.path}: no partition has destination 'eval'")
    # The same collator as training, so the transcript side has the objective's form.
    collator = build_collator(tokenizer, count, objective, data_args, prompts.system_prompt)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    if not args.json:
        print(
            f"# {data_config.path.name} [{args.destination}]: {len(ds)} samples; prompt format "
            f"{prompts.prompt_format}, collator mode {objective.collator_mode}; labelled spans in "
            f"{LABEL_OPEN} {LABEL_CLOSE}"
        )
    for i in range(min(args.num_samples, len(ds))):
        row_id, task = ds.row_id(i), ds.task_name(i)
        batch = collator([ds[i]])
        if batch["input_ids"].shape[0] == 0:
            reason = ", ".join(batch["skipped"]) or "dropped"
            print(
                json.dumps({"id": row_id, "task": task, "skipped": reason})
                if args.json
                else f"\n== {row_id} ({task}): skipped: {reason}"
            )
            continue
        length = int(batch["attention_mask"][0].sum())
        ids = batch["input_ids"][0, :length].tolist()
        labels = batch["labels"][0, :length].tolist()
        ids_c, labels_c = collapse_audio_runs(ids, labels, audio_token_id)
        text_ids = None
        if "text_input_ids" in batch:
            text_ids = batch["text_input_ids"][0, : int(batch["text_attention_mask"][0].sum())].tolist()
        if args.json:
            print(
                json.dumps(
                    {
                        "id": row_id,
                        "task": task,
                        "input_ids": ids_c,
                        "labels": labels_c,
                        "text_input_ids": text_ids,
                    }
                )
            )
            continue
        audio_positions = sum(1 for t in ids if t == audio_token_id)
        print(f"\n== {row_id} ({task}): {length} positions, {audio_positions} of them audio")
        print(render(decode, ids_c, labels_c))
        if text_ids is not None:
            print(f"-- contrastive text side: {decode(text_ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
