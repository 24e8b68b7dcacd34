from __future__ import annotations

import pytest

from llava.demo.projector_probe import main, probe


def test_a_fresh_projector_memorises_a_few_utterances(tiny_base_dirs, tiny_corpus, capsys):
    enc, _ = tiny_base_dirs
    history = probe(
        enc.parent,
        tiny_corpus,
        steps=30,
        projector="mlp",
        projector_options={"stack": 4},
        learning_rate=1e-2,
        batch_size=4,
        train_limit=4,
        dev_limit=4,
        eval_every=15,
    )
    assert [row["step"] for row in history] == [0, 15, 30]
    assert all(row["dev_nll"] > 0 for row in history)
    assert history[-1]["train_nll"] < history[0]["train_nll"]  # the gradient reaches the projector
    assert main(["--base", str(enc.parent), "--corpus", str(tiny_corpus), "--steps", "1", "--projector", "mlp",
                 "--projector-options", '{"stack": 4}', "--dev-limit", "2", "--eval-every", "1"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"step": 1' in lines[-1]


def test_a_corpus_without_the_asr_config_is_named(tmp_path, tiny_base_dirs):
    enc, _ = tiny_base_dirs
    with pytest.raises(FileNotFoundError, match="pretrain_asr.yml"):
        probe(enc.parent, tmp_path, steps=1)
