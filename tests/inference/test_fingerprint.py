"""Fingerprints: each part changes when what it describes changes, and only then."""

from __future__ import annotations

import hashlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from llava.inference.fingerprint import (
    base_model_fingerprint,
    fingerprint_changes,
    json_digest,
    model_fingerprint,
    parquet_fingerprint,
    sha256_file,
    tensors_digest,
)


def test_file_json_and_tensor_digests(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    t = torch.arange(6.0).reshape(2, 3)
    same = tensors_digest([("w", t), ("b", torch.zeros(2))])
    assert same == tensors_digest([("b", torch.zeros(2)), ("w", t.clone())])  # order of listing
    assert same != tensors_digest([("w", t + 1e-6), ("b", torch.zeros(2))])
    assert same != tensors_digest([("w", t.double()), ("b", torch.zeros(2))])  # dtype counts
    assert same != tensors_digest([("w", t.reshape(3, 2)), ("b", torch.zeros(2))])  # shape counts


def test_parquet_fingerprint_follows_content_not_location(tmp_path):
    a = tmp_path / "a" / "tst.parquet"
    a.parent.mkdir()
    pq.write_table(pa.table({"transcript": ["one", "two"], "x": [1, 2]}), a)
    b = tmp_path / "b" / "tst.parquet"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert parquet_fingerprint(a) == parquet_fingerprint(b)
    pq.write_table(pa.table({"transcript": ["one", "too"], "x": [1, 2]}), b)  # same size, other text
    assert parquet_fingerprint(a)["size"] == parquet_fingerprint(b)["size"]
    assert parquet_fingerprint(a)["footer"] != parquet_fingerprint(b)["footer"]


def test_base_model_fingerprint_of_a_directory(tmp_path):
    d = tmp_path / "llm"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 64}')
    (d / "model.safetensors").write_bytes(b"\0" * (5 << 20))
    (d / ".cache").mkdir()
    first = base_model_fingerprint(str(d))
    (d / ".cache" / "lock").write_text("")  # not part of the model
    assert base_model_fingerprint(str(d)) == first
    with open(d / "model.safetensors", "r+b") as fh:  # the last tensors change
        fh.seek((5 << 20) - 10)
        fh.write(b"\1")
    assert base_model_fingerprint(str(d))["files"] != first["files"]
    assert "files" not in base_model_fingerprint("org/model-on-the-hub")


def test_model_fingerprint(tiny_model, tiny_checkpoint):
    model, _ = tiny_model
    fp = model_fingerprint(model)
    assert set(fp) == {"trainable_weights", "encoder", "llm", "dtypes"}
    assert fp["dtypes"]["llm"] == "torch.float32" and fp["encoder"]["layer"] == -1
    with torch.no_grad():
        next(model.projector.parameters()).add_(1.0)
    assert fingerprint_changes(fp, model_fingerprint(model)) == ["trainable_weights"]
    from_ckpt = model_fingerprint(model, tiny_checkpoint)
    assert from_ckpt["trainable_weights"] == sha256_file(tiny_checkpoint / "model.safetensors")
    assert from_ckpt["checkpoint_config"] == sha256_file(tiny_checkpoint / "config.json")


def test_fingerprint_changes_names_every_differing_leaf():
    old = {"model": {"w": "a", "llm": {"config": "c"}}, "settings": {"beams": 1, "x": [1, 2]}}
    new = {"model": {"w": "a", "llm": {"config": "d"}}, "settings": {"beams": 1, "x": (1, 2), "new": 0}}
    assert fingerprint_changes(old, new) == ["model.llm.config", "settings.new"]
    assert fingerprint_changes(old, old) == []
