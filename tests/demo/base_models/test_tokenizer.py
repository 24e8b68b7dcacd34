from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llava.demo.base_models.tokenizer import BOS, EOS, EOT, PAD, train_bpe_tokenizer

TEXTS = [
    "The little girl reads the red book in the garden.",
    "Das kleine Mädchen liest das rote Buch im Garten.",
    "My friend buys 12345 apples at the market, doesn't he?",
    "Where is the old letter?\nIt is on the blue chair.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def reloaded(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(str(d))
    return AutoTokenizer.from_pretrained(str(d))


@pytest.mark.parametrize(
    "text",
    ["Der Bär trägt 2024 Äpfel über die Brücke.", "  two  spaces\n\nand lines ", "unseen wörds: ß ñ 中文 🙂"],
)
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_specials_and_bos(tok):
    vocab = tok.get_vocab()
    for special in (BOS, EOS, EOT, PAD, "<|start_header_id|>", "<|end_header_id|>"):
        assert special in vocab
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOT, PAD)
    # Like Llama-3: plain encoding prepends BOS, add_special_tokens=False does not.
    with_bos = tok("the red book")["input_ids"]
    bare = tok("the red book", add_special_tokens=False)["input_ids"]
    assert with_bos == [tok.bos_token_id, *bare]
    # Special tokens written in text are single ids.
    assert tok(EOT, add_special_tokens=False)["input_ids"] == [vocab[EOT]]


def test_llama3_pre_tokenizer(tok):
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("abc 12345 don't")]
    # Digits in groups of at most three; contractions split off; byte-level space marker.
    assert pieces == ["abc", "Ġ", "123", "45", "Ġdon", "'t"]


def test_chat_template_renders_llama3_format(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Transcribe the audio.\n<audio> "},
        {"role": "assistant", "content": "the cat sleeps"},
    ]
    expected = (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTranscribe the audio.\n<audio><|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nthe cat sleeps<|eot_id|>"
    )
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_save_reload(tok, reloaded):
    assert reloaded.get_vocab() == tok.get_vocab()
    assert len(reloaded) == len(tok)
    for text in TEXTS[:4]:
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    messages = [
        {"role": "user", "content": "Translate: the cat"},
        {"role": "assistant", "content": "die Katze"},
    ]
    text = reloaded.apply_chat_template(messages, tokenize=False)
    assert text == tok.apply_chat_template(messages, tokenize=False)
    # transformers 5 returns a BatchEncoding; the template's BOS is not doubled.
    enc = reloaded.apply_chat_template(messages, tokenize=True)
    assert enc["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"].count(tok.bos_token_id) == 1


def test_vocab_size_and_save(tmp_path):
    tok = train_bpe_tokenizer(TEXTS, vocab_size=300, out_dir=tmp_path, min_frequency=1)
    assert len(tok) <= 300
    assert (tmp_path / "tokenizer.json").is_file()
    assert AutoTokenizer.from_pretrained(str(tmp_path)).get_vocab() == tok.get_vocab()
