"""Frozen-encoder feature cache: exactness, keys/namespaces, corrupt entries, full disk, bypass."""

from __future__ import annotations

import errno
import logging

import pytest
import torch

from llava.model import apply_training_mode, build_model
from llava.model import feature_cache as fc
from llava.model.feature_cache import FeatureCache, attach_feature_cache, decode_entry, namespace_of
from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config
from tests.helpers import speech_batch

LENGTHS = [16000, 9000, 12345]


def _loss(model, batch):
    return model(**batch).loss


def _per_utterance(encoder, batch):
    """Independent reference: the uncached encoder on each utterance alone."""
    with torch.no_grad():
        return [
            encoder.encode(batch["audio_values"][i : i + 1, :n], batch["audio_lengths"][i : i + 1])[0][0]
            for i, n in enumerate(batch["audio_lengths"].tolist())
        ]


def test_cold_and_warm_cache_give_identical_loss(tiny_model, tmp_path):
    model, tok = tiny_model
    model.train()
    batch = speech_batch(model, tok, LENGTHS, seed=0)
    cold = attach_feature_cache(model.audio_tower, tmp_path)
    loss_cold = _loss(model, batch)
    assert (cold.stats.hits, cold.stats.misses, cold.stats.written) == (0, 3, 3)
    assert cold.disk_usage()[0] == 3

    warm = attach_feature_cache(model.audio_tower, tmp_path)  # a fresh process would do the same
    assert warm.namespace == cold.namespace
    loss_warm = _loss(model, batch)
    assert warm.stats.hits == 3 and warm.stats.misses == 0
    assert torch.equal(loss_cold, loss_warm)
    loss_warm.backward()  # the projector still trains on cached features
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())

    # Another batch composition (other padding) gives the same per-utterance features.
    feats, mask = model.audio_tower(batch["audio_values"][1:2, : LENGTHS[1]], batch["audio_lengths"][1:2])
    full, full_mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    t = int(mask.sum())
    assert torch.equal(feats[0, :t], full[1, :t]) and int(full_mask[1].sum()) == t


def test_float32_storage_equals_the_uncached_encoder(tiny_model, tmp_path):
    model, tok = tiny_model
    model.eval()
    batch = speech_batch(model, tok, LENGTHS, seed=0)
    loss_plain = _loss(model, batch)
    with torch.no_grad():
        plain, plain_mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    reference = _per_utterance(model.audio_tower, batch)

    attach_feature_cache(model.audio_tower, tmp_path, storage_dtype="float32")
    for _ in range(2):  # cold, then warm
        cached, mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
        assert cached.shape == plain.shape and torch.equal(mask, plain_mask)
        for i, ref in enumerate(reference):
            t = ref.shape[0]
            assert torch.equal(cached[i, :t], ref)  # exactly the per-utterance definition
            assert not cached[i, t:].any()
        # An attention-masked encoder is padding independent up to float rounding.
        torch.testing.assert_close(cached[mask], plain[plain_mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_loss(model, batch), loss_plain, atol=1e-5, rtol=1e-5)


def test_bfloat16_storage_is_the_rounded_feature(tiny_model, tmp_path):
    model, tok = tiny_model
    model.eval()
    batch = speech_batch(model, tok, LENGTHS, seed=0)
    reference = _per_utterance(model.audio_tower, batch)
    loss_plain = _loss(model, batch)
    attach_feature_cache(model.audio_tower, tmp_path)  # bf16 storage by default
    cached, _ = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    assert cached.dtype == torch.float32  # the encoder's dtype, values on the bf16 grid
    for i, ref in enumerate(reference):
        assert torch.equal(cached[i, : ref.shape[0]], ref.to(torch.bfloat16).float())
    # Within bf16 rounding of the features (2**-8 relative) the loss barely moves.
    torch.testing.assert_close(_loss(model, batch), loss_plain, atol=0, rtol=2e-3)


def test_namespace_follows_encoder_identity(tiny_model, tmp_path):
    model, _ = tiny_model
    enc = model.audio_tower
    base = namespace_of(fc.encoder_identity(enc))
    assert namespace_of(fc.encoder_identity(enc, "float32")) != base
    enc.layer = 1
    assert namespace_of(fc.encoder_identity(enc)) != base
    enc.layer = -1
    enc.model.config.layerdrop = 0.3  # inactive in eval mode: same features, same namespace
    assert namespace_of(fc.encoder_identity(enc)) == base
    with torch.no_grad():
        next(enc.model.parameters()).view(-1)[0] += 1e-3
    assert namespace_of(fc.encoder_identity(enc)) != base
    enc.feature_extractor.do_normalize = not enc.feature_extractor.do_normalize
    assert namespace_of(fc.encoder_identity(enc)) != base


def test_cache_of_another_layer_is_never_read(tiny_model, tmp_path):
    model, tok = tiny_model
    batch = speech_batch(model, tok, LENGTHS, seed=0)
    first = attach_feature_cache(model.audio_tower, tmp_path, storage_dtype="float32")
    last_layer, _ = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    model.audio_tower.layer = 1  # another output layer, same directory
    other = attach_feature_cache(model.audio_tower, tmp_path, storage_dtype="float32")
    assert other.namespace != first.namespace
    layer1, mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    assert other.stats.hits == 0 and other.stats.misses == 3
    reference = _per_utterance(model.audio_tower, batch)
    assert torch.equal(layer1[0, : reference[0].shape[0]], reference[0])
    assert not torch.equal(layer1[mask], last_layer[mask])
    assert len(fc.report(tmp_path).splitlines()) == 2  # one line per namespace


def test_truncated_or_corrupt_entries_are_recomputed(tiny_model, tmp_path, caplog):
    model, tok = tiny_model
    batch = speech_batch(model, tok, LENGTHS, seed=0)
    cache = attach_feature_cache(model.audio_tower, tmp_path)
    good, _ = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    paths = sorted(cache.dir.glob("*/*.safetensors"))
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # a write killed half way
    flipped = bytearray(paths[1].read_bytes())
    flipped[-3] ^= 0xFF  # bit rot in the tensor bytes
    paths[1].write_bytes(bytes(flipped))
    with pytest.raises(fc.CorruptEntry, match="truncated"):
        decode_entry(data[: len(data) // 2])
    with pytest.raises(fc.CorruptEntry, match="checksum"):
        decode_entry(bytes(flipped))

    again = attach_feature_cache(model.audio_tower, tmp_path)
    with caplog.at_level(logging.WARNING, logger="llava.model.feature_cache"):
        feats, _ = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    assert torch.equal(feats, good)
    assert (again.stats.corrupt, again.stats.hits, again.stats.written) == (2, 1, 2)
    assert "checksum mismatch" in caplog.text and "truncated" in caplog.text
    for p in paths:  # rewritten whole
        decode_entry(p.read_bytes())


def test_entry_copied_under_another_key_is_rejected(tiny_model, tmp_path):
    model, tok = tiny_model
    batch = speech_batch(model, tok, LENGTHS[:2], seed=0)
    cache = attach_feature_cache(model.audio_tower, tmp_path)
    model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    k0 = cache.key(batch["audio_values"][0, : LENGTHS[0]])
    k1 = cache.key(batch["audio_values"][1, : LENGTHS[1]])
    cache.path(k1).write_bytes(cache.path(k0).read_bytes())
    assert cache.get(k1, LENGTHS[1], 1, 32) is None
    assert cache.stats.corrupt == 1


def test_full_disk_is_reported_and_training_continues(tiny_model, tmp_path, monkeypatch, caplog):
    model, tok = tiny_model
    batch = speech_batch(model, tok, LENGTHS, seed=0)
    calls = []

    def full(path, data):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fc, "_write_bytes", full)
    cache = attach_feature_cache(model.audio_tower, tmp_path, storage_dtype="float32")
    with caplog.at_level(logging.WARNING, logger="llava.model.feature_cache"):
        feats, mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    assert len(calls) == 1  # reported once, then no further write attempts
    assert cache.write_disabled and "disk full" in cache.write_disabled
    assert "disk full" in caplog.text and "disk full" in cache.summary()
    reference = _per_utterance(model.audio_tower, batch)
    assert all(torch.equal(feats[i, : r.shape[0]], r) for i, r in enumerate(reference))

    tight = FeatureCache.for_encoder(tmp_path / "other", model.audio_tower, min_free_gb=1e9)
    assert not tight.put("ab" * 20, torch.zeros(2, 32, dtype=torch.bfloat16), 640)
    assert "GiB free" in tight.write_disabled


def test_trainable_encoder_bypasses_the_cache(tiny_tokenizer, tmp_path, caplog):
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    apply_training_mode(model, freeze_encoder=False)
    with caplog.at_level(logging.INFO, logger="llava.model.feature_cache"):
        assert attach_feature_cache(model.audio_tower, tmp_path) is None
    assert "encoder trains" in caplog.text

    apply_training_mode(model, freeze_encoder=True)
    cache = attach_feature_cache(model.audio_tower, tmp_path)
    model.audio_tower.frozen = False  # unfrozen after attaching: bypassed, nothing read or written
    batch = speech_batch(model, tok, LENGTHS[:2], seed=0)
    with caplog.at_level(logging.INFO, logger="llava.model.encoders"):
        model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    assert cache.stats.hits + cache.stats.misses == 0 and "bypassed" in caplog.text


def test_whisper_cache_keeps_the_fixed_window(tiny_tokenizer, tmp_path):
    model, tok = build_model(
        tiny_encoder_config("whisper"),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    apply_training_mode(model)
    batch = speech_batch(model, tok, [16000, 8000], seed=0)
    plain, plain_mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    attach_feature_cache(model.audio_tower, tmp_path, storage_dtype="float32")
    cached, mask = model.audio_tower(batch["audio_values"], batch["audio_lengths"])
    assert cached.shape == plain.shape == (2, 100, 32) and torch.equal(mask, plain_mask)
    torch.testing.assert_close(cached[mask], plain[mask], atol=1e-5, rtol=1e-5)
