"""Throughput metering: counts against hand-computed values, and the rates in a real run's logs."""

from __future__ import annotations

import json

import pytest
import torch

from llava.train import throughput as tp
from llava.train import train as train_mod
from llava.train.throughput import ThroughputMeter, objective_passes
from tests.helpers import train_argv


def _batch(lengths, tokens, width, labelled):
    audio = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(tokens), width, dtype=torch.long)
    labels = torch.full((len(tokens), width), -100)
    for i, (n, k) in enumerate(zip(tokens, labelled)):
        mask[i, :n] = 1
        labels[i, n - k : n] = 7
    return {
        "input_ids": torch.zeros(len(tokens), width, dtype=torch.long),
        "attention_mask": mask,
        "labels": labels,
        "audio_values": audio,
        "audio_lengths": torch.tensor(lengths),
    }


def test_meter_counts_padding_rates_and_mfu(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr(tp.time, "perf_counter", lambda: next(clock))
    meter = ThroughputMeter(16000, flops_fn=lambda batch: (1e12, 1e9), peak_tflops=2.0)
    meter.on_train_begin(None, None, None)  # t = 100
    meter.observe(_batch([16000, 8000], [10, 6], 12, [3, 2]))
    meter.observe(_batch([32000], [20], 20, [5]))
    meter.observe(_batch([99999], [5], 5, [1]), training=False)  # evaluation: not counted
    m = meter.metrics()  # t = 102: 2 s
    assert m["utterances_per_second"] == pytest.approx(3 / 2)
    assert m["audio_seconds_per_second"] == pytest.approx((16000 + 8000 + 32000) / 16000 / 2)
    assert m["audio_padding"] == pytest.approx(1 - 56000 / (2 * 16000 + 32000))
    assert m["tokens_per_second"] == pytest.approx(36 / 2)
    assert m["token_padding"] == pytest.approx(1 - 36 / (24 + 20))
    # labels[:, 1:] hold 3 + 2 + 5 labelled positions; FLOPs = 2 batches x 1e12 + 10 x 1e9
    assert m["mfu"] == pytest.approx((2e12 + 10e9) / 2 / 2e12)
    assert meter.metrics() == {}  # t = 103: counts were reset, nothing seen since


def test_objective_passes_reads_objective_sets():
    class Part:
        def __init__(self, name, layers=None):
            self.name = name
            if layers is not None:
                self.layers = layers

    class Set:
        def __init__(self, *parts):
            self.parts = {p.name: p for p in parts}

    assert objective_passes(Set(Part("contrastive_average", [0, 2]), Part("nwp"))) == (True, [0, 2])
    assert objective_passes(Set(Part("mixed_contrastive"), Part("mixed"))) == (True, [])
    assert objective_passes(Set(Part("something_new"))) is None


def _args(base_dirs, corpus, out, *extra):
    return train_argv(
        base_dirs, corpus / "configs" / "pretrain_asr.yml", out, "--max_steps", "2", "--save_strategy", "no",
        "--contrastive_training", "True", "--contrastive_layer", "all", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_training_logs_throughput_and_reuses_both_caches(tmp_path, tiny_base_dirs, tiny_corpus):
    cache = tmp_path / "cache"
    runs = []
    for name in ("cold", "warm"):
        trainer = train_mod.main(
            _args(
                tiny_base_dirs,
                tiny_corpus,
                tmp_path / name,
                "--audio_feature_cache",
                str(cache),
                "--text_state_cache",
                str(tmp_path / "text"),
            )  # fmt: skip
        )
        runs.append([h for h in trainer.state.log_history if "loss" in h])
        speech_model = getattr(trainer.model, "model", trainer.model)  # inside the objective wrapper
        for stats in (speech_model.audio_tower.feature_cache.stats, speech_model.text_cache.stats):
            if name == "cold":
                assert stats.written > 0 and stats.hits == 0
            else:
                assert stats.hits > 0 and stats.misses == 0 and stats.written == 0
    cold, warm = runs
    assert [h["loss"] for h in cold] == [h["loss"] for h in warm]  # the cache is exact
    for h in cold + warm:
        assert h["audio_seconds_per_second"] > 0 and h["tokens_per_second"] > 0
        assert 0 <= h["audio_padding"] < 1 and 0 <= h["token_padding"] < 1
        assert "mfu" not in h  # no GPU peak on a CPU
    saved = json.loads((tmp_path / "warm" / "trainer_state.json").read_text())["log_history"]
    assert "audio_seconds_per_second" in saved[0]
