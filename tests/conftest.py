"""Shared fixtures: tiny tokenizers and model configs built in-process (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava.demo.base_models.tokenizer import train_bpe_tokenizer

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small cat sleeps on the warm mat in the sun",
    "der schnelle braune fuchs springt über den faulen hund",
    "transcribe the audio into text",
    "translate the audio into german",
    "answer the question about the audio",
    "what does the speaker say",
    "one two three four five six seven eight nine ten",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer with Llama-3 special tokens and chat template (vocab ~400)."""
    return train_bpe_tokenizer(_CORPUS * 4, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


# ----------------------------------------------------------------------------- tiny model configs
def tiny_encoder_config(kind: str = "hubert") -> dict:
    """Config dicts of ~30k-parameter encoders keeping the real frame rate (50 Hz at 16 kHz)."""
    if kind == "whisper":
        return dict(
            model_type="whisper",
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            max_source_positions=100,  # 2 s window
            max_target_positions=16,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
    return dict(
        model_type=kind,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        layerdrop=0.0,
        mask_time_prob=0.05,
        vocab_size=32,
    )


def tiny_llm_config(vocab_size: int = 400) -> dict:
    return dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


TINY_QFORMER = dict(
    num_queries=2, num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, dropout=0.0
)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A random tiny HuBERT -> Q-Former -> Llama model, frozen except the projector."""
    from llava.model import apply_training_mode, build_model

    model, tok = build_model(
        tiny_encoder_config("hubert"),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_type="qformer",
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    apply_training_mode(model)
    return model, tok


@pytest.fixture(scope="session")
def tiny_base_dirs(tmp_path_factory, tiny_tokenizer):
    """Tiny encoder and LLM saved as ordinary HF directories, as a user's real checkpoints would be."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from llava.model.encoders import default_feature_extractor

    root = tmp_path_factory.mktemp("base")
    enc_cfg = dict(tiny_encoder_config("hubert"))
    enc_config = AutoConfig.for_model(enc_cfg.pop("model_type"), **enc_cfg)
    torch.manual_seed(1)
    AutoModel.from_config(enc_config).save_pretrained(root / "encoder")
    default_feature_extractor(enc_config).save_pretrained(root / "encoder")
    llm_cfg = dict(tiny_llm_config())
    llm_config = AutoConfig.for_model(llm_cfg.pop("model_type"), **llm_cfg)
    AutoModelForCausalLM.from_config(llm_config).save_pretrained(root / "llm")
    tiny_tokenizer.save_pretrained(root / "llm")
    return root / "encoder", root / "llm"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """The synthetic spoken corpus at its smallest size (a few seconds to build)."""
    pytest.importorskip("espeakng_loader")
    from llava.demo.corpus.build import build_corpus

    out = tmp_path_factory.mktemp("synth")
    build_corpus(out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_base_dirs):
    """A checkpoint over `tiny_base_dirs` whose (random) projector is scaled up so that the audio
    changes the generated text (eval, batch inference and chat tests)."""
    from llava.model import apply_training_mode, build_model, save_trainable

    enc_dir, llm_dir = tiny_base_dirs
    torch.manual_seed(0)
    model, _ = build_model(str(enc_dir), str(llm_dir), projector_config=TINY_QFORMER)
    apply_training_mode(model)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.mul_(5.0)
    return save_trainable(model, tmp_path_factory.mktemp("ckpt") / "ckpt")
