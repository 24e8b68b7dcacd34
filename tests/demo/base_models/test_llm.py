from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from llava.demo.base_models.llm import (
    LlmTrainArgs,
    dev_loss,
    encode_example,
    encode_examples,
    generate_replies,
    pack_whole,
    train_tiny_llm,
)
from llava.demo.base_models.tokenizer import EOS, EOT, train_bpe_tokenizer

SENTENCES = [
    "The little girl reads the red book in the garden.",
    "Das kleine Mädchen liest das rote Buch im Garten.",
    "A young man buys a warm coat at the market.",
    "Ein junger Mann kauft einen warmen Mantel auf dem Markt.",
    "The old farmer opens the blue door every morning.",
    "Der alte Bauer öffnet jeden Morgen die blaue Tür.",
]
CHATS = [
    [
        {"role": "user", "content": "Translate the audio into German.\nThe little girl reads the red book."},
        {"role": "assistant", "content": "Das kleine Mädchen liest das rote Buch."},
    ],
    [
        {"role": "user", "content": "Transcribe the audio.\nA young man buys a warm coat."},
        {"role": "assistant", "content": "A young man buys a warm coat."},
    ],
]
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Models this small gain nothing from intra-op threads; on a busy CPU the threads wait on each other.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(SENTENCES * 4, vocab_size=320)


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm")
    args = LlmTrainArgs(time_budget_s=None, max_steps=40, batch_size=4, block_size=32, lr=1e-2, log_every=10)
    report = train_tiny_llm(
        SENTENCES * 3 + CHATS * 3, SENTENCES[:2] + CHATS[:1], tok, out, config=TINY, args=args
    )
    return out, report


def test_encode_example_weights(tok):
    ids, weights = encode_example(SENTENCES[0], tok)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.convert_tokens_to_ids(EOS)
    assert weights == [1.0] * len(ids)

    ids, weights = encode_example(CHATS[0], tok, prompt_weight=0.0)
    assert ids == tok.apply_chat_template(CHATS[0], tokenize=True)["input_ids"]
    reply = [i for i, w in zip(ids, weights) if w == 1.0]
    # Exactly the reply and its end-of-turn token carry the loss.
    assert tok.decode(reply) == CHATS[0][1]["content"] + EOT
    assert all(w == 0.0 for w in weights[: len(ids) - len(reply)])


def test_training_lowers_loss(trained):
    _, report = trained
    assert report["steps"] == 40
    assert report["final_train_loss"] < report["first_train_loss"] - 1.0
    assert report["dev_ppl"] == pytest.approx(torch.tensor(report["dev_loss"]).exp().item(), rel=1e-5)
    assert report["dev_reply_ppl"] > 1.0


def test_saved_dir_reloads(trained, tok):
    out, report = trained
    model = AutoModelForCausalLM.from_pretrained(str(out))
    reloaded = AutoTokenizer.from_pretrained(str(out))
    assert isinstance(model, LlamaForCausalLM)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "train_report.json").read_text())["steps"] == report["steps"]
    cfg = model.config
    assert cfg.vocab_size == len(tok) and cfg.max_position_embeddings >= 2048
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    assert tok.convert_tokens_to_ids(EOT) in eos
    assert reloaded.get_vocab() == tok.get_vocab()
    # Identical weights: the reloaded model reproduces the dev loss measured before saving ...
    dev = SENTENCES[:2] + CHATS[:1]
    assert dev_loss(model, reloaded, dev) == pytest.approx(report["dev_loss"], abs=1e-5)
    # ... and a second load gives bit-identical logits, also at shifted positions (pipeline offsets).
    again = AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.tensor([tok(SENTENCES[2])["input_ids"]])
    pos = torch.arange(ids.shape[1])[None] + 399
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
        assert torch.isfinite(model(input_ids=ids, position_ids=pos).logits).all()


def test_generate_replies(trained):
    out, _ = trained
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    replies = generate_replies(model, tok, [c[:1] for c in CHATS], max_new_tokens=5)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert tok.padding_side == "right"  # restored


def test_rejects_empty(tok, tmp_path):
    with pytest.raises(ValueError):
        train_tiny_llm([], [], tok, tmp_path, config=TINY, args=LlmTrainArgs(time_budget_s=None, max_steps=1))


def test_encode_examples_match_one_by_one(tok):
    examples = [SENTENCES[0], *CHATS, SENTENCES[1]]
    for weight in (1.0, 0.25):
        assert encode_examples(examples, tok, weight) == [encode_example(e, tok, weight) for e in examples]


def test_pack_whole_keeps_examples_whole():
    docs = [
        ([1, 2, 3], [1.0, 1.0, 1.0]),
        ([4, 5], [0.5, 1.0]),
        ([6, 7, 8, 9], [1.0] * 4),
        ([10] * 7, [1.0] * 7),
    ]
    ids, weights = pack_whole(docs, block=6, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0], [10] * 6]
    assert weights.tolist() == [[1, 1, 1, 0.5, 1, 0], [1, 1, 1, 1, 0, 0], [1] * 6]


def test_whole_packing_trains(tok, tmp_path):
    args = LlmTrainArgs(
        time_budget_s=None,
        max_steps=30,
        batch_size=4,
        block_size=64,
        lr=1e-2,
        packing="whole",
        decay_frac=0.3,
    )
    report = train_tiny_llm(SENTENCES * 3 + CHATS * 3, [], tok, tmp_path, config=TINY, args=args)
    assert report["final_train_loss"] < report["first_train_loss"] - 1.0
    expected = sum(
        min(len(encode_example(e, tok)[0]), 64) for e in SENTENCES * 3 + CHATS * 3
    )  # cut to a block
    assert report["train_tokens"] == expected
    with pytest.raises(ValueError, match="LlmTrainArgs.packing: unknown value 'zip'"):
        train_tiny_llm(
            SENTENCES, [], tok, tmp_path, config=TINY, args=LlmTrainArgs(max_steps=1, packing="zip")
        )


class _Interrupt(Exception):
    pass


def test_killed_run_resumes_to_identical_weights(tok, tmp_path, caplog):
    data = SENTENCES * 3 + CHATS * 3
    kwargs = dict(time_budget_s=None, max_steps=12, batch_size=4, block_size=64, lr=1e-2, packing="whole")
    whole = train_tiny_llm(data, [], tok, tmp_path / "a", config=TINY, args=LlmTrainArgs(**kwargs))

    args = LlmTrainArgs(**kwargs, checkpoint_every=4, eval_every=1)
    resume = tmp_path / "resume"

    def stop_at_7(model):
        if stop_at_7.step == 7:
            raise _Interrupt  # a kill between two checkpoints: steps 5-7 are redone
        stop_at_7.step += 1
        return {}

    stop_at_7.step = 1
    with pytest.raises(_Interrupt):
        train_tiny_llm(
            data, [], tok, tmp_path / "b", config=TINY, args=args, evaluate=stop_at_7, resume_dir=resume
        )
    assert (resume / "llm_checkpoint.pt").is_file()
    again = train_tiny_llm(
        data, [], tok, tmp_path / "b", config=TINY, args=args, evaluate=lambda m: {}, resume_dir=resume
    )
    assert not (resume / "llm_checkpoint.pt").exists()  # removed once finished
    assert again["steps"] == whole["steps"] == 12
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [c["step"] for c in again["curve"]] == list(range(1, 13))

    # A checkpoint of other settings is not used.
    stop_at_7.step = 1
    with pytest.raises(_Interrupt):
        train_tiny_llm(
            data, [], tok, tmp_path / "c", config=TINY, args=args, evaluate=stop_at_7, resume_dir=resume
        )
    other = LlmTrainArgs(**{**kwargs, "lr": 5e-3}, checkpoint_every=4)
    with caplog.at_level("WARNING", logger="llava.demo.base_models.llm"):
        report = train_tiny_llm(data, [], tok, tmp_path / "c", config=TINY, args=other, resume_dir=resume)
    assert "belongs to other settings: starting afresh" in caplog.text
    assert report["steps"] == 12


def test_init_from_continues_a_saved_model(trained, tok, tmp_path):
    out, report = trained
    # lr 0: the continued model is the saved one, so its dev loss is the saved run's (a fresh model's
    # would be near ln(vocab)); its config is the saved one's, not the `config` argument.
    args = LlmTrainArgs(time_budget_s=None, max_steps=2, batch_size=4, block_size=32, lr=0.0)
    cont = train_tiny_llm(
        CHATS * 2,
        SENTENCES[:2] + CHATS[:1],
        tok,
        tmp_path,
        config=dict(TINY, hidden_size=64),
        args=args,
        init_from=out,
    )
    assert cont["dev_loss"] == pytest.approx(report["dev_loss"], abs=1e-5)
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path)).config.hidden_size == TINY["hidden_size"]
