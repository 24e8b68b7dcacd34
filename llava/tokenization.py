"""Tokenizer helpers shared by the data side and the model side."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from llava.constants import AUDIO_TOKEN

# End-of-turn tokens of common chat templates (Llama-3, ChatML/Qwen, Gemma, Phi-3), in order of
# preference, and Llama-3's end of text last. The collator labels the first one present as the end of
# the target; generation stops at any of them.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|end_of_text|>")


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The token that closes a chat turn: the first of END_OF_TURN_TOKENS in the vocabulary, else EOS."""
    vocab = tokenizer.get_vocab()
    return next((t for t in END_OF_TURN_TOKENS if t in vocab), tokenizer.eos_token)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every END_OF_TURN_TOKENS entry the vocabulary has (generation stops at any of them)."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]


def add_audio_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register `<audio>` as a special token (idempotent) and return its id.

    The LLM's embedding matrix is not resized: placeholder positions are overwritten with projector
    outputs before the LLM sees them, so the id only has to be recognisable, never embedded.
    """
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AUDIO_TOKEN], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Give the tokenizer a pad token when it has none (Llama-3 ships without one)."""
    if tokenizer.pad_token_id is None:
        for candidate in ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"):
            if candidate in tokenizer.get_vocab():
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id
