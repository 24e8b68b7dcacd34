"""Filling a feature cache from a data config, in several processes, and sharing it with training."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from llava.dataset.audio import encode_audio
from llava.dataset.importers import write_parquet
from llava.model import apply_training_mode, build_model
from llava.model.feature_cache import attach_feature_cache, report
from llava.model.feature_cache_fill import fill, main

SR = 16000
ROWS = 5


@pytest.fixture
def data_config(tmp_path):
    rows = []
    for i in range(ROWS):
        t = np.arange(int(SR * (0.4 + 0.1 * i))) / SR
        wave = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
        rows.append({"audio": encode_audio(wave, SR), "transcript": f"words {i}", "duration": len(t) / SR})
    (tmp_path / "giga" / "parquet_files").mkdir(parents=True)
    write_parquet(rows, tmp_path / "giga" / "parquet_files" / "gigaspeech_train.parquet")
    cfg = tmp_path / "data.yml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            DATA:
              - Gigaspeech:
                  datapath: {tmp_path / "giga"}
                  task: ASR
                  partitions:
                    train: {{destination: train}}
            """
        )
    )
    return cfg


def _opts(data_config, encoder_dir, out):
    return {
        "data_config": str(data_config),
        "audio_encoder": str(encoder_dir),
        "out": str(out),
        "layer": -1,
        "destinations": ["train"],
        "storage_dtype": "bfloat16",
        "encoder_dtype": "auto",
        "attn_implementation": "eager",
        "device": "cpu",
        "min_free_gb": 0.0,
    }


@pytest.mark.slow  # two spawned processes
def test_fill_with_two_workers_then_training_hits_every_entry(data_config, tiny_base_dirs, tmp_path):
    encoder_dir, llm_dir = tiny_base_dirs
    out = tmp_path / "cache"
    result = fill(_opts(data_config, encoder_dir, out), workers=2)
    assert result["counts"] == {"computed": ROWS} and result["rows"] == ROWS
    assert result["bytes_written"] > 0

    # The training side builds its encoder its own way; it must land in the same namespace.
    model, _ = build_model(str(encoder_dir), str(llm_dir), attn_implementation="eager")
    apply_training_mode(model)
    cache = attach_feature_cache(model.audio_tower, out)
    assert cache.namespace == result["namespace"]
    assert cache.disk_usage()[0] == ROWS

    from llava.dataset.dataset import SpeechDataset

    ds = SpeechDataset.from_config(data_config, "train", train=False)
    for i in range(ROWS):
        audio = torch.from_numpy(np.asarray(ds[i]["audio"]))[None]
        feats, mask = model.audio_tower(audio, torch.tensor([audio.shape[1]]))
        ref, _ = model.audio_tower.encode(audio, torch.tensor([audio.shape[1]]))
        torch.testing.assert_close(feats[mask], ref[mask].to(torch.bfloat16).float(), atol=1e-6, rtol=0)
    assert cache.stats.hits == ROWS and cache.stats.misses == 0


def test_refill_skips_valid_entries_and_replaces_a_truncated_one(
    data_config, tiny_base_dirs, tmp_path, capsys
):
    encoder_dir, _ = tiny_base_dirs
    out = tmp_path / "cache"
    opts = _opts(data_config, encoder_dir, out)
    first = fill(opts)
    assert first["counts"] == {"computed": ROWS}
    victim = sorted(out.glob("*/*/*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # a fill killed mid-write
    again = fill(opts)
    assert again["counts"] == {"existing": ROWS - 1, "computed": 1}
    assert again["corrupt_replaced"] == 1

    assert main(["--report", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(first["namespace"]) and f"{ROWS} entries" in line and "hubert layer -1" in line
    assert report(tmp_path / "nothing").endswith("empty")


def test_cli_rejects_missing_arguments():
    with pytest.raises(SystemExit):
        main(["--out", "x"])
