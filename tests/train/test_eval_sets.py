"""Named validation sets: one dataset per eval partition, logged as eval_<name>_loss with every
objective term under the set's name, each equal to evaluating that set alone."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from torch.utils.data import Subset

from llava.dataset.config import ConfigError, load_data_config
from llava.dataset.dataset import SpeechDataset
from llava.dataset.importers import write_parquet
from llava.train import train as train_mod
from llava.train.eval_sets import check_best_model_metric, eval_set_names, split_eval_sets
from tests.helpers import train_argv


def _asr_files(root, stems):
    sr = 16000
    for k, stem in enumerate(stems):
        rows = []
        for i in range(3):
            wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * i + k) * np.arange(sr // 2) / sr)).astype(np.float32)
            rows.append({"audio": {"array": wave.tolist(), "sampling_rate": sr}, "transcript": f"w{i}"})
        write_parquet(rows, root / f"{stem}.parquet")


def _config(tmp_path, body: str):
    path = tmp_path / "data.yml"
    path.write_text(textwrap.dedent(body))
    return path


def test_names_from_the_config(tmp_path):
    _asr_files(tmp_path, ["train", "dev", "other", "more"])
    cfg = _config(
        tmp_path,
        f"""
        DATA:
          - Parquet:
              datapath: {tmp_path}
              task: ASR
              partitions:
                train: {{destination: train}}
                dev: {{destination: eval}}
                other: {{destination: eval, name: held-out}}
                more: {{destination: eval, name: held-out}}
          - Parquet:
              datapath: {tmp_path}
              task: ASR
              languages: [de]
              partitions: {{dev: {{destination: eval}}}}
          - Parquet:
              datapath: {tmp_path}/.
              task: ASR
              partitions: {{dev: {{destination: eval}}}}
        """,
    )
    config = load_data_config(cfg)
    names = eval_set_names(config.for_destination("eval"))
    # derived from type/task/language/partition; explicit names pool; a repeated stem gets numbered
    assert names == [
        "Parquet_ASR_en_dev",
        "held-out",
        "held-out",
        "Parquet_ASR_de_dev",
        "Parquet_ASR_en_dev_2",
    ]
    config.sources = config.sources[:-1]  # (a dataset refuses the repeated stem: its row ids would clash)
    ds = SpeechDataset.from_config(config, "eval")
    sets = split_eval_sets(ds, max_samples=2)
    assert list(sets) == ["Parquet_ASR_en_dev", "held-out", "Parquet_ASR_de_dev"]
    assert [len(v) for v in sets.values()] == [2, 2, 2]  # each set capped on its own
    held = sets["held-out"]
    assert {held.dataset.row_id(i).rsplit(":", 2)[-2] for i in held.indices} <= {"other", "more"}
    assert len(split_eval_sets(ds)["held-out"]) == 6  # both partitions, pooled


def test_one_set_stays_a_plain_dataset_and_bad_names_fail(tmp_path):
    _asr_files(tmp_path, ["train", "dev"])
    body = f"""
        DATA:
          - Parquet:
              datapath: {tmp_path}
              task: ASR
              partitions: {{train: {{destination: train}}, dev: {{destination: eval, name: NAME}}}}
        """
    ds = SpeechDataset.from_config(_config(tmp_path, body.replace("NAME", "dev")), "eval")
    assert split_eval_sets(ds) is ds
    capped = split_eval_sets(ds, max_samples=1)
    assert isinstance(capped, Subset) and len(capped) == 1
    with pytest.raises(ConfigError, match=r"data\.yml: DATA\[0\]\.Parquet\.partitions\.dev\.name"):
        load_data_config(_config(tmp_path, body.replace("NAME", "'a b'")))


def test_best_model_metric_must_name_a_set():
    args = SimpleNamespace(load_best_model_at_end=True, metric_for_best_model="loss")
    with pytest.raises(ValueError, match=r"--metric_for_best_model loss: .*\['eval_a_loss', 'eval_b_loss'\]"):
        check_best_model_metric(args, ["a", "b", "b"])
    check_best_model_metric(
        SimpleNamespace(load_best_model_at_end=True, metric_for_best_model="eval_b_loss"), ["a", "b"]
    )
    check_best_model_metric(args, ["a", "a"])  # one set: eval_loss exists


def _two_set_config(tmp_path, corpus):
    return _config(
        tmp_path,
        f"""
        DATA:
          - MuSTC:
              datapath: {corpus / "MUSTC"}
              task: ASR
              languages: [en-de]
              partitions:
                train: {{destination: train}}
                dev: {{destination: eval, name: dev-asr}}
          - MuSTC:
              datapath: {corpus / "MUSTC"}
              task: ST
              languages: [en-de]
              partitions: {{dev: {{destination: eval}}}}
        """,
    )


def _args(base_dirs, cfg, out, *extra):
    return train_argv(
        base_dirs, cfg, out, "--per_device_eval_batch_size", "4", "--save_strategy", "no", *extra
    )


def test_training_logs_each_validation_set_under_its_name(tmp_path, tiny_base_dirs, tiny_corpus):
    cfg = _two_set_config(tmp_path, tiny_corpus)
    trainer = train_mod.main(
        _args(tiny_base_dirs, cfg, tmp_path / "out", "--max_steps", "1", "--eval_strategy", "steps",
              "--eval_steps", "1", "--max_eval_samples", "6")
    )  # fmt: skip
    names = ["dev-asr", "MuSTC_ST_en-de_dev"]
    assert list(trainer.eval_dataset) == names
    logged = [h for h in trainer.state.log_history if any(k.startswith("eval_") for k in h)]
    keys = set().union(*logged)
    for name in names:
        assert {f"eval_{name}_loss", f"eval_{name}_nwp"} <= keys
    assert "eval_loss" not in keys and "eval_nwp" not in keys  # nothing pooled
    # Each named result is that set evaluated alone (an independent evaluation of the final model).
    both = trainer.evaluate()
    for name in names:
        alone = trainer.evaluate(eval_dataset=trainer.eval_dataset[name])
        assert both[f"eval_{name}_loss"] == pytest.approx(alone["eval_loss"], rel=1e-6)
        assert both[f"eval_{name}_nwp"] == pytest.approx(alone["eval_nwp"], rel=1e-6)
    assert both["eval_dev-asr_loss"] != pytest.approx(both["eval_MuSTC_ST_en-de_dev_loss"])


def test_load_best_model_needs_one_sets_metric_before_loading(
    tmp_path, tiny_base_dirs, tiny_corpus, monkeypatch
):
    cfg = _two_set_config(tmp_path, tiny_corpus)
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match=r"--metric_for_best_model loss: .*eval_dev-asr_loss"):
        train_mod.main(
            _args(tiny_base_dirs, cfg, tmp_path / "o", "--eval_strategy", "steps", "--save_strategy", "steps",
                  "--load_best_model_at_end", "True")
        )  # fmt: skip
