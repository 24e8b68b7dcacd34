from __future__ import annotations

import hashlib
import json

import pytest

from llava.demo.base_models import shipped
from llava.demo.base_models.shipped import (
    ShippedModelsError,
    compare_files,
    model_files,
    sha256_file,
    shipped_base_models,
    verify_models,
)


@pytest.fixture
def fake_assets(tmp_path):
    """A shipped layout with small files, and its record."""
    models = tmp_path / "assets" / "base_models"
    (models / "llm").mkdir(parents=True)
    (models / "encoder").mkdir()
    (models / "llm" / "config.json").write_text('{"model_type": "llama"}')
    (models / "llm" / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (models / "encoder" / "preprocessor_config.json").write_text('{"sampling_rate": 16000}')
    (models / "encoder" / "train_report.json").write_text('{"train_time_s": 1.0}')  # not shipped
    files = model_files(models)
    record = tmp_path / "assets" / "base_models.json"
    record.write_text(json.dumps({"files": files, "figures": {"encoder_dev_cer": 0.05}, "seed": 42}))
    return models, record


def test_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "x.bin"
    data = b"speech" * 300_000  # several read chunks
    path.write_bytes(data)
    assert sha256_file(path, chunk=4096) == hashlib.sha256(data).hexdigest()


def test_model_files_lists_both_models_without_reports(fake_assets):
    models, _ = fake_assets
    files = model_files(models)
    assert sorted(files) == ["encoder/preprocessor_config.json", "llm/config.json", "llm/model.safetensors"]
    assert files["llm/config.json"] == hashlib.sha256(b'{"model_type": "llama"}').hexdigest()


def test_compare_files_names_each_problem():
    expected = {"a": "1" * 64, "b": "2" * 64, "c": "3" * 64}
    actual = {"a": "1" * 64, "b": "9" * 64, "d": "4" * 64}
    problems = compare_files(actual, expected)
    assert problems == [
        "c: missing",
        "d: not in the record",
        "b: sha256 999999999999... != recorded 222222222222...",
    ]
    assert compare_files(expected, expected) == []


def test_copies_verified_models(fake_assets, tmp_path):
    models, record = fake_assets
    dest = shipped_base_models(tmp_path / "base", models_dir=models, record_path=record)
    assert dest == tmp_path / "base"
    assert (dest / "llm" / "model.safetensors").read_bytes() == (
        models / "llm" / "model.safetensors"
    ).read_bytes()
    assert not (dest / "encoder" / "train_report.json").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temporary directories left
    report = json.loads((dest / "report.json").read_text())
    assert report == {"source": "shipped", "summary": {"encoder_dev_cer": 0.05}, "seed": 42}
    # A second call finds the verified copy; without dest the shipped directory itself is returned.
    assert shipped_base_models(dest, models_dir=models, record_path=record) == dest
    assert shipped_base_models(None, models_dir=models, record_path=record) == models


def test_altered_weights_are_refused(fake_assets, tmp_path):
    models, record = fake_assets
    weights = models / "llm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ShippedModelsError, match=r"refusing .*llm/model\.safetensors: sha256 .* != recorded"):
        shipped_base_models(tmp_path / "base", models_dir=models, record_path=record)
    assert not (tmp_path / "base").exists()


def test_missing_and_extra_files_are_refused(fake_assets, tmp_path):
    models, record = fake_assets
    (models / "encoder" / "preprocessor_config.json").unlink()
    (models / "llm" / "extra.bin").write_bytes(b"x")
    with pytest.raises(ShippedModelsError) as info:
        verify_models(models, json.loads(record.read_text()))
    assert "encoder/preprocessor_config.json: missing" in str(info.value)
    assert "llm/extra.bin: not in the record" in str(info.value)


def test_a_tampered_copy_is_replaced(fake_assets, tmp_path):
    models, record = fake_assets
    dest = shipped_base_models(tmp_path / "base", models_dir=models, record_path=record)
    (dest / "llm" / "config.json").write_text("{}")
    shipped_base_models(dest, models_dir=models, record_path=record)
    assert (dest / "llm" / "config.json").read_text() == '{"model_type": "llama"}'


def test_missing_or_bad_record(fake_assets, tmp_path):
    models, _ = fake_assets
    with pytest.raises(ShippedModelsError, match="no record of shipped base models"):
        shipped_base_models(None, models_dir=models, record_path=tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"command": "x"}))
    with pytest.raises(ShippedModelsError, match="field 'files'"):
        shipped_base_models(None, models_dir=models, record_path=bad)


@pytest.mark.skipif(not shipped.RECORD_PATH.is_file(), reason="no shipped base models in this checkout")
def test_the_shipped_models_verify_and_load(tmp_path):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer

    root = shipped_base_models()
    record = json.loads(shipped.RECORD_PATH.read_text())
    assert sum((root / rel).stat().st_size for rel in record["files"]) <= 25 * 2**20
    assert AutoConfig.from_pretrained(root / "llm").model_type == "llama"
    assert AutoConfig.from_pretrained(root / "encoder").model_type == "hubert"
    assert AutoFeatureExtractor.from_pretrained(root / "encoder").sampling_rate == 16000
    tok = AutoTokenizer.from_pretrained(root / "llm")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
