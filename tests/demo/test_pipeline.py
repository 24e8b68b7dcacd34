"""The study's wiring: every flag it passes parses as the training entry point reads it, the fixed
variant reaches both stages, altered shipped base models stop the study, budget overrides."""

from __future__ import annotations

import json

import pytest

from llava.demo.__main__ import override
from llava.demo.phases import PhaseError
from llava.demo.pipeline import Study
from llava.demo.variants import BUDGETS, FIX_WEIGHT, VARIANTS
from llava.train.train import parse_args


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_every_variants_flags_parse_as_training_reads_them(tmp_path, tiny_base_dirs, key):
    enc, llm = tiny_base_dirs
    base = llm.parent
    study = Study(tmp_path / "study", BUDGETS["default"], [0], [key], progress=False)
    variant = VARIANTS[key]
    args = study._train_args(1, 10, 3, 1e-3, variant)
    if variant.fix_weights:
        args += study._layer_weights(base)
    if variant.log_grad_norms:
        args += ["--log_term_grad_norms", "True"]
    model_args, _, loss_args, train_args = parse_args(["--output_dir", str(tmp_path / "o"), *args])[:4]
    config = model_args.projector_config()
    budget = BUDGETS["default"]
    assert model_args.mm_speech_projector_type == budget.projector_type
    assert {k: config[k] for k in budget.projector} == budget.projector
    assert train_args.max_steps == 10 and train_args.seed == 3
    if key in ("contr-cos-all-fixed", "pos-shift"):
        weights = dict(item.split(":") for item in loss_args.contrastive_layer_weights.split(","))
        assert float(weights["0"]) == 1.0 and {float(w) for k, w in weights.items() if k != "0"} == {
            FIX_WEIGHT
        }
    else:
        assert not loss_args.contrastive_layer_weights
    assert config.get("output_norm", "none") == budget.output_norm  # every variant, both stages
    if study._supports("audio_feature_cache"):
        assert str(study.cache_dir) in args


def test_each_stage_gets_its_own_batch_size(tmp_path):
    budget = override(BUDGETS["default"], ["batch_size=12", "finetune_batch_size=8"])
    study = Study(tmp_path / "study", budget, [0], ["asr"], progress=False)
    for stage, expected in ((1, 12), (2, 8)):
        args = study._train_args(stage, 10, 0, 1e-3, VARIANTS["asr"])
        assert args[args.index("--per_device_train_batch_size") + 1] == str(expected)
    same = Study(tmp_path / "s2", override(budget, ["finetune_batch_size=0"]), [0], ["asr"], progress=False)
    args = same._train_args(2, 10, 0, 1e-3, VARIANTS["asr"])
    assert args[args.index("--per_device_train_batch_size") + 1] == "12"  # 0: stage 2 uses stage 1's
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        budget.stage_batch_size(3)


def test_altered_shipped_base_models_are_refused(tmp_path, monkeypatch):
    def refuse(dest):
        raise RuntimeError("llm/model.safetensors: sha256 does not match the record")

    monkeypatch.setattr("llava.demo.pipeline._shipped_base_models", lambda: refuse)
    study = Study(tmp_path, BUDGETS["smoke"], [0], ["none"], progress=False)
    with pytest.raises(PhaseError, match="refused: llm/model.safetensors: sha256"):
        study.base_models(tmp_path / "corpus")
    assert not (tmp_path / "base").exists()


def test_budget_override():
    b = override(BUDGETS["default"], ["pretrain_steps=7", "fill_cache=false", "variants=none,asr"])
    assert (b.pretrain_steps, b.fill_cache, b.variants) == (7, False, ("none", "asr"))
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        override(BUDGETS["default"], ["bogus=1"])


def test_budget_output_norm_reaches_both_ways_of_building_the_projector():
    b = override(BUDGETS["default"], ["output_norm=rms_match"])
    flags = b.projector_flags()
    assert flags[flags.index("--projector_output_norm") + 1] == "rms_match"
    assert b.projector_options()["output_norm"] == "rms_match"
    paper = override(BUDGETS["default"], ["output_norm=none"])
    assert "--projector_output_norm" not in paper.projector_flags()
    assert "output_norm" not in paper.projector_options()


def test_budget_projector_type_and_settings_become_training_flags_that_parse():
    from llava.train.train import parse_args

    b = override(BUDGETS["default"], ["projector_type=mlp", 'projector={"stack": 3}'])
    flags = b.projector_flags()
    assert flags[:2] == ["--mm_speech_projector_type", "mlp"] and b.projector_options()["stack"] == 3
    base = [
        "--model_name_or_path",
        "m",
        "--audio_encoder",
        "e",
        "--data_config_path",
        "d",
        "--output_dir",
        "o",
    ]
    model_args = parse_args(base + flags)[0]
    assert model_args.projector_config()["stack"] == 3
    c = override(BUDGETS["default"], ['projector={"stack": 2, "context": 1}'])
    assert parse_args(base + c.projector_flags())[0].projector_config()["context"] == 1
    q = override(BUDGETS["default"], ["projector_type=qformer", 'projector={"hidden_size": 32, "num_queries": 1, "window_seconds": 0.06, "window_positions": true}'])  # fmt: skip
    cfg = parse_args(base + q.projector_flags())[0].projector_config()
    assert (cfg["hidden_size"], cfg["num_queries"], cfg["window_seconds"], cfg["window_positions"]) == (32, 1, 0.06, True)  # fmt: skip
    with pytest.raises(ValueError, match="not mlp settings"):
        override(q, ["projector_type=mlp"]).projector_flags()  # Q-Former settings left
    with pytest.raises(ValueError, match="JSON object"):
        override(BUDGETS["default"], ["projector=[3]"])


def test_default_run_has_every_variant_but_the_exploratory_one():
    # A new variant must be placed in the default run or named here as exploratory.
    assert set(BUDGETS["default"].variants) == set(VARIANTS) - {"contr-cos-emb-spelled"}
    assert VARIANTS["contr-cos-emb-spelled"].spelled_transcripts


def test_chains_start_seed_by_seed_and_longest_first_within_a_seed(tmp_path):
    keys = list(BUDGETS["default"].variants)
    study = Study(tmp_path / "study", BUDGETS["default"], [0, 1], keys, progress=False)
    chains = study.chains()
    assert [seed for _, seed in chains] == sorted(seed for _, seed in chains)  # seed 0 decides the 100 % run
    for seed in (0, 1):
        costs = [VARIANTS[key].chain_seconds for key, s in chains if s == seed]
        assert costs == sorted(costs, reverse=True) and min(costs) > 0
    assert chains[0] == ("contr-cos-all+asr", 0) and chains[-1] == ("none", 1)


def test_a_variant_limited_to_the_first_seeds_runs_only_there(tmp_path):
    keys = ["none", "pos-shift"]
    assert VARIANTS["pos-shift"].first_seeds == 1 and VARIANTS["none"].first_seeds == 0
    study = Study(tmp_path / "study", BUDGETS["default"], [3, 5, 7], keys, progress=False)
    assert study.chains() == [("pos-shift", 3), ("none", 3), ("none", 5), ("none", 7)]
    # The progress tracker expects exactly those phases (pos-shift has no stage 2).
    assert study.tracker.plan["pretrain"] == 4 and study.tracker.plan["finetune"] == 3 + 1


def test_a_rerun_with_other_settings_redoes_what_the_change_touches(tmp_path, monkeypatch):
    """Finished phases are reused only under the settings they ran with: a stage-2 change redoes
    stage 2 and the evaluation, not stage 1; a stage-1 change redoes everything after it."""
    calls: list[str] = []

    def fake_train(self, name, script, args, env, tmp, steps):
        calls.append(name)
        return {"summary": "ok"}

    monkeypatch.setattr(Study, "_train", fake_train)
    # No probe of the training flags; the feature cache's flag names a path inside the study.
    monkeypatch.setattr(Study, "_supports", lambda self, flag: flag == "audio_feature_cache")
    base, corpus = tmp_path / "base", tmp_path / "corpus"

    def run(*overrides: str) -> None:
        study = Study(tmp_path / "study", override(BUDGETS["default"], list(overrides)), [0], ["asr"], progress=False)  # fmt: skip
        pre = study.pretrain("asr", 0, base, corpus)
        study.finetune("asr", 0, base, corpus, pre)

    run()
    assert calls == ["seed0/pretrain/asr", "seed0/finetune/asr"]
    run()  # the same settings: both reused
    assert len(calls) == 2
    run('finetune_lora={"r": 4}')  # stage 2 only
    assert calls[2:] == ["seed0/finetune/asr"]
    run('finetune_lora={"r": 4}', "pretrain_steps=7")  # stage 1, and stage 2 through its digest
    assert calls[3:] == ["seed0/pretrain/asr", "seed0/finetune/asr"]
    done = json.loads((tmp_path / "study/seed0/finetune/asr/DONE.json").read_text())
    assert "--lora_r" in done["settings"]["args"]
    assert "<out>/feature_cache" in done["settings"]["args"]  # a moved study keeps its phases
