"""Prediction files: records, truncated-line repair, ordered rewrite, run records, writable check."""

from __future__ import annotations

import json

import pytest

from llava.inference.predictions import (
    append_predictions,
    check_run_record,
    ensure_writable_dir,
    prediction_record,
    read_predictions,
    record_references,
    write_predictions,
)


def test_prediction_records_and_their_references():
    rec = prediction_record("u1", "SQA", "paris", ["Paris", "in Paris"], failed=None)
    assert rec == {
        "id": "u1",
        "task": "SQA",
        "prediction": "paris",
        "reference": "Paris",
        "references": ["Paris", "in Paris"],
    }
    assert record_references(rec) == ["Paris", "in Paris"]
    st = prediction_record("u2", "ST", "", ["hallo"], source="hello", failed="bad_audio")
    assert st == {
        "id": "u2",
        "task": "ST",
        "prediction": "",
        "reference": "hallo",
        "source": "hello",
        "failed": "bad_audio",
    }
    assert record_references(st) == ["hallo"]
    with pytest.raises(ValueError, match="no reference"):
        prediction_record("u3", "ASR", "x", [])
    with pytest.raises(ValueError, match=r"preds.jsonl: record 'u4' has no 'reference'"):
        record_references({"id": "u4", "prediction": "x"}, "preds.jsonl: ")
    with pytest.raises(ValueError, match="non-empty list"):
        record_references({"id": "u5", "prediction": "x", "references": []})


def test_prediction_file_reading(tmp_path):
    path = tmp_path / "x_preds.jsonl"
    good = [json.dumps({"id": f"u{i}", "prediction": str(i)}) for i in range(3)]
    path.write_text("\n".join(good) + "\n" + good[0][:7])  # truncated last line
    assert sorted(read_predictions(path)) == ["u0", "u1", "u2"]
    assert path.read_text() == "\n".join(good) + "\n"  # repaired for appending
    path.write_text(good[0] + "\n{broken\n" + good[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_predictions(path)
    path.write_text(good[0])  # complete record, no newline yet
    assert list(read_predictions(path)) == ["u0"] and path.read_text() == good[0] + "\n"
    assert read_predictions(tmp_path / "missing.jsonl") == {}


def test_append_then_rewrite_in_order(tmp_path):
    path = tmp_path / "p.jsonl"
    append_predictions(path, [{"id": "b", "prediction": "2"}])
    append_predictions(path, [{"id": "a", "prediction": "1 ü"}])
    records = read_predictions(path)
    assert list(records) == ["b", "a"]
    write_predictions(path, [records["a"], records["b"]])
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b"]
    assert "ü" in path.read_text()


def test_run_record_refuses_other_makers(tmp_path):
    path = tmp_path / "x_run.json"
    fp = {"model": {"trainable_weights": "aa"}, "settings": {"generation": {"num_beams": 1}}}
    check_run_record(path, fp, predictions_exist=False)
    assert json.loads(path.read_text()) == {"fingerprint": fp}
    check_run_record(path, fp, predictions_exist=True)  # same maker: resume
    other = {"model": {"trainable_weights": "bb"}, "settings": {"generation": {"num_beams": 4}}}
    with pytest.raises(
        ValueError, match=r"changed: model.trainable_weights, settings.generation.num_beams; .*--overwrite"
    ):
        check_run_record(path, other, predictions_exist=True)
    check_run_record(path, other, predictions_exist=True, overwrite=True)
    assert json.loads(path.read_text()) == {"fingerprint": other}
    path.unlink()
    with pytest.raises(ValueError, match="what made the predictions beside it is unknown"):
        check_run_record(path, fp, predictions_exist=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable run record"):
        check_run_record(path, fp, predictions_exist=True)


def test_writable_directory_check(tmp_path, monkeypatch):
    assert ensure_writable_dir(tmp_path / "a" / "b", "--out").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(PermissionError, match=r"--out .*f/x: not a writable directory"):
        ensure_writable_dir(tmp_path / "f" / "x", "--out")

    def read_only(*args, **kwargs):  # a read-only mount (root ignores chmod, so simulate it)
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr("llava.inference.predictions.tempfile.mkstemp", read_only)
    with pytest.raises(
        PermissionError, match="--results-dir .*: not a writable directory \\(Read-only file system\\)"
    ):
        ensure_writable_dir(tmp_path / "a", "--results-dir")
