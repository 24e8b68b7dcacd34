"""A byte-level BPE tokenizer with Llama-3-style special tokens, pre-tokenizer and chat template.

It behaves like the Llama-3 Instruct tokenizer wherever the pipeline can tell the difference:
plain `tokenizer(text)` prepends `<|begin_of_text|>` (pass `add_special_tokens=False` for bare
tokens), the chat template renders the same headers and `<|eot_id|>` turn ends, and the text is
split by the same regular expression (digits in groups of at most three, contractions apart)
before byte-level BPE.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"
HEADER_START = "<|start_header_id|>"
HEADER_END = "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, EOS, HEADER_START, HEADER_END, EOT, PAD]

# Llama-3's split pattern (tiktoken `cl100k`-style), used before the byte-level mapping.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Same rendering as Llama-3 Instruct: a header per turn, content trimmed, <|eot_id|> closes a turn.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


def _bpe_model(texts: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Llama-3 prepends BOS to every encoded text (and to each text of a pair).
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    out_dir: str | Path | None = None,
    min_frequency: int = 2,
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; save it as a HF tokenizer directory when `out_dir` is given.

    `vocab_size` counts the 256 byte symbols and the special tokens; training stops earlier when no
    pair occurs `min_frequency` times. The special tokens and chat template follow Llama-3 Instruct,
    so prompts render as they do for the real model (`<|eot_id|>` doubles as the EOS for generation,
    `<|finetune_right_pad_id|>` is the pad token).
    """
    tok = _bpe_model(list(texts), vocab_size, min_frequency)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        hf_tok.save_pretrained(str(out_dir))
    return hf_tok
