"""The shared constants: what the loss ignores and the audio placeholder the collator expands."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.constants import AUDIO_TOKEN, IGNORE_INDEX
from llava.tokenization import add_audio_token


def test_ignore_index_is_what_cross_entropy_skips():
    # Labels set to IGNORE_INDEX (prompt, padding, audio) must not count: the default of torch's CE and
    # of transformers' causal-LM loss.
    assert IGNORE_INDEX == torch.nn.CrossEntropyLoss().ignore_index
    logits = torch.randn(4, 7)
    labels = torch.tensor([3, IGNORE_INDEX, 5, IGNORE_INDEX])
    expected = F.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(F.cross_entropy(logits, labels), expected)


def test_audio_token_stays_one_token_in_a_chat_turn(tiny_tokenizer):
    # The collator finds each placeholder as one id in the rendered chat: it must survive the
    # template and tokenization whole, and text around it must not merge into it.
    tok = tiny_tokenizer
    audio_id = add_audio_token(tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": f"say{AUDIO_TOKEN}what\n{AUDIO_TOKEN}"}], tokenize=False
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(audio_id) == 2
    assert tok.convert_ids_to_tokens(audio_id) == AUDIO_TOKEN
