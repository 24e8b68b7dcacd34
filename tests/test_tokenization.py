from __future__ import annotations

import copy

from llava.constants import AUDIO_TOKEN
from llava.tokenization import (
    END_OF_TURN_TOKENS,
    add_audio_token,
    end_of_turn_ids,
    end_of_turn_token,
    ensure_pad_token,
)


def test_end_of_turn_token_prefers_the_chat_turn_end(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    assert end_of_turn_token(tok) == "<|eot_id|>"  # Llama-3 template: the turn end, not <|end_of_text|>
    names = [tok.convert_ids_to_tokens(i) for i in end_of_turn_ids(tok)]
    assert names[0] == "<|eot_id|>" and set(names) <= set(END_OF_TURN_TOKENS)
    assert "<|im_end|>" not in names  # only what the vocabulary has


def test_add_audio_token_is_idempotent_and_pad_is_set(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    first = add_audio_token(tok)
    assert add_audio_token(tok) == first == tok.convert_tokens_to_ids(AUDIO_TOKEN)
    assert tok(AUDIO_TOKEN, add_special_tokens=False)["input_ids"] == [first]
    assert ensure_pad_token(tok) == tok.pad_token_id is not None
