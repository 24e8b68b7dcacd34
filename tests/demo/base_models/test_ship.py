"""The rebuild command of the shipped base models, at the `smoke` budget on the tiny corpus."""

from __future__ import annotations

import json

import pytest
import torch

from llava.demo.base_models import ship
from llava.demo.base_models.shipped import ShippedModelsError, model_files, shipped_base_models
from llava.demo.corpus.espeak import espeak_available

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng (pip install espeakng-loader) missing"
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Two smoke rebuilds from the same corpus; the torch settings around them."""
    root = tmp_path_factory.mktemp("ship")
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    assert ship.main(["--out", str(root / "a"), "--budget", "smoke", "--corpus-size", "tiny"]) == 0
    after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    corpus = root / "a" / "corpus"
    assert ship.main(["--out", str(root / "b"), "--budget", "smoke", "--corpus", str(corpus)]) == 0
    return root, before, after


@needs_espeak
def test_rebuild_is_bit_identical(smoke):
    root, _, _ = smoke
    a = json.loads((root / "a" / "base_models.json").read_text())
    b = json.loads((root / "b" / "base_models.json").read_text())
    assert a["files"] == b["files"]
    assert a["files"] == model_files(root / "a" / "build")
    for rel in ("llm/model.safetensors", "llm/tokenizer.json", "encoder/model.safetensors"):
        assert rel in a["files"]
    assert "encoder/preprocessor_config.json" in a["files"]
    assert not any(rel.endswith("train_report.json") for rel in a["files"])  # wall times differ per run
    assert a["budget"] == "smoke" and a["corpus"]["size"] == "tiny"
    assert a["command"].startswith("python -m llava.demo.base_models.ship --out")
    assert a["command"].endswith("--budget smoke --seed 42 --corpus-size tiny --corpus-seed 0")
    assert a["seeds"] == {"llm": 42, "encoder": 42} and "seed" not in a
    assert set(a["figures"]["text_topline_test"]) == {"repeat_wer", "st_bleu", "sqa_f1"}
    assert 0.0 <= a["figures"]["encoder_dev_cer"]


@needs_espeak
def test_torch_settings_are_restored(smoke):
    _, before, after = smoke
    assert before == after


@needs_espeak
def test_rebuild_loads_like_real_checkpoints(smoke):
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    build = smoke[0] / "a" / "build"
    llm = AutoModelForCausalLM.from_pretrained(build / "llm")
    tok = AutoTokenizer.from_pretrained(build / "llm")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi."}], add_generation_prompt=True)[
        "input_ids"
    ]
    assert llm(input_ids=torch.tensor([ids])).logits.shape[-1] == llm.config.vocab_size
    encoder = AutoModel.from_pretrained(build / "encoder")
    fe = AutoFeatureExtractor.from_pretrained(build / "encoder")
    feats = fe([torch.zeros(16000).numpy()], sampling_rate=16000, return_tensors="pt")
    assert encoder(feats.input_values).last_hidden_state.shape[1] == 49  # 50 frames/s, HuBERT's rule


@needs_espeak
def test_check_install_and_refusal(smoke, tmp_path, capsys):
    root = smoke[0]
    record = root / "a" / "base_models.json"
    args = ["--out", str(root / "b"), "--budget", "smoke", "--corpus", str(root / "a" / "corpus"), "--keep"]
    assert ship.main([*args, "--check", "--record", str(record)]) == 0
    assert "rebuild matches" in capsys.readouterr().out
    altered = json.loads(record.read_text())
    altered["files"]["llm/model.safetensors"] = "0" * 64
    (tmp_path / "altered.json").write_text(json.dumps(altered))
    assert ship.main([*args, "--check", "--record", str(tmp_path / "altered.json")]) == 1
    assert "llm/model.safetensors: sha256" in capsys.readouterr().err

    models, record_path = tmp_path / "assets" / "base_models", tmp_path / "assets" / "base_models.json"
    ship.install(root / "b" / "build", json.loads(record.read_text()), models, record_path)
    dest = shipped_base_models(tmp_path / "copy", models_dir=models, record_path=record_path)
    assert model_files(dest) == json.loads(record.read_text())["files"]
    (models / "encoder" / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ShippedModelsError, match="encoder/model.safetensors"):
        shipped_base_models(tmp_path / "copy2", models_dir=models, record_path=record_path)


@needs_espeak
def test_install_part_replaces_one_model_and_keeps_the_other(smoke, tmp_path):
    import shutil

    root = smoke[0]
    record = json.loads((root / "a" / "base_models.json").read_text())
    models, record_path = tmp_path / "assets" / "base_models", tmp_path / "assets" / "base_models.json"
    ship.install(root / "a" / "build", record, models, record_path)
    build = tmp_path / "build"  # a rebuilt LLM that differs from the shipped one in one file
    shutil.copytree(root / "b" / "build" / "llm", build / "llm")
    (build / "llm" / "generation_config.json").write_text('{"note": "another recipe"}')
    report = json.loads((build / "llm" / "train_report.json").read_text())
    with pytest.raises(ShippedModelsError, match="budget 'smoke', not 'ship'"):
        ship.install_part(build, "llm", "ship", 42, models, record_path)

    new = ship.install_part(build, "llm", "smoke", 43, models, record_path)
    # Each model keeps its own seed, and the command rebuilds both with them (corpus flags kept).
    assert new["seeds"] == {"llm": 43, "encoder": 42}
    assert new["command"] == (
        "python -m llava.demo.base_models.ship --out DIR --budget smoke --llm-seed 43 --encoder-seed 42"
        " --corpus-size tiny --corpus-seed 0"
    )
    assert new["files"]["llm/generation_config.json"] != record["files"]["llm/generation_config.json"]
    changed = {k for k in record["files"] if new["files"][k] != record["files"][k]}
    assert changed == {"llm/generation_config.json"} and new["files"].keys() == record["files"].keys()
    assert new["figures"]["encoder_dev_cer"] == record["figures"]["encoder_dev_cer"]
    assert new["figures"]["text_topline_test"] == report["text_topline_summary"]["test"]
    assert new["build_time_s"]["encoder"] == record["build_time_s"]["encoder"]
    assert new["build_time_s"]["total"] == pytest.approx(
        sum(v for k, v in new["build_time_s"].items() if k != "total"), abs=0.2
    )
    assert json.loads(record_path.read_text()) == new
    assert new["versions"] == record["versions"] and "versions_encoder" not in new  # same libraries here
    assert (
        model_files(shipped_base_models(tmp_path / "copy", models_dir=models, record_path=record_path))
        == new["files"]
    )

    (models / "encoder" / "vocab.json").write_text("{}")  # the kept model must still be the recorded one
    with pytest.raises(ShippedModelsError, match="encoder/vocab.json: sha256"):
        ship.install_part(build, "llm", "smoke", 42, models, record_path)


def test_each_model_has_its_own_seed():
    from llava.demo.base_models.build import part_seed_map

    assert part_seed_map(42) == {"llm": 42, "encoder": 42}
    assert part_seed_map(42, {"llm": 44}) == {"llm": 44, "encoder": 42}
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['projector'\]"):
        part_seed_map(42, {"projector": 1})
    # Records written before per-model seeds name one seed for both models.
    assert ship.record_seeds({"seed": 42}) == {"llm": 42, "encoder": 42}
    assert ship.record_seeds({"seeds": {"llm": 44, "encoder": 42}}) == {"llm": 44, "encoder": 42}
    assert ship.ship_command("ship", {"llm": 44, "encoder": 42}).endswith(
        "--budget ship --llm-seed 44 --encoder-seed 42"
    )


def test_time_budgets_are_not_reproducible(tmp_path):
    with pytest.raises(ValueError, match="budget 'small' is counted in seconds"):
        ship.rebuild(tmp_path, budget="small")
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        ship.rebuild(tmp_path, budget="huge")


@needs_espeak
def test_topline_command_reproduces_the_builds_own_figures(smoke, capsys):
    from llava.demo.base_models import topline

    root = smoke[0] / "a"
    argv = ["--llm", str(root / "build" / "llm"), "--corpus", str(root / "corpus"), "--limit", "4"]
    assert topline.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    recorded = json.loads((root / "build" / "report.json").read_text())["summary"]
    for split in ("dev", "test"):
        assert result[split]["spelled"] == recorded["spelled_topline"][split]
    assert result["test"]["words"] == recorded["text_topline_test"]
    for split in ("dev", "test"):  # the repeat task's details agree with its mean
        rep, mean = result[split]["words_repeat"], result[split]["words"]["repeat_wer"]
        assert rep["num_utterances"] == 4
        assert rep["worst"]["wer"] >= mean - 0.05  # the worst utterance is at least the mean
        assert (rep["num_over_100"] > 0) == (rep["worst"]["wer"] > 100)
