from __future__ import annotations

import json
from dataclasses import asdict, replace

from llava.demo.base_models.budgets import BUDGETS, Budget
from llava.demo.base_models.llm_recipe import llm_phases
from llava.demo.base_models.parts import PART_FIELDS, REPORT_NAME
from llava.demo.base_models.parts import finished as _finished


def _saved(tmp_path, name: str, spec: dict, seed: int = 42):
    model_dir = tmp_path / name
    model_dir.mkdir()
    (model_dir / REPORT_NAME).write_text(json.dumps({"build": {"budget": "x", "seed": seed, "spec": spec}}))
    return model_dir


def test_step_budgets_are_deterministic_time_budgets_are_not():
    assert BUDGETS["ship"].deterministic and BUDGETS["smoke"].deterministic
    assert not BUDGETS["small"].deterministic


def test_part_fields_name_budget_fields():
    names = {f for f in Budget.__dataclass_fields__}
    assert set(PART_FIELDS["llm"]) <= names and set(PART_FIELDS["encoder"]) <= names
    assert set(PART_FIELDS["llm_text"]) < set(PART_FIELDS["llm"])  # the spelled phase adds its own


def test_first_llm_phase_reused_when_only_the_spelled_phase_changes(tmp_path):
    spec = BUDGETS["ship"]
    stamp = {"budget": "ship", "seed": 42, "spec": asdict(spec)}
    first, final = _saved(tmp_path, "llm_text", asdict(spec)), _saved(tmp_path, "llm", asdict(spec))
    longer = {**stamp, "spec": asdict(replace(spec, spell_steps=spec.spell_steps + 1))}
    assert _finished(first, longer) is not None and _finished(final, longer) is None
    other_first = {**stamp, "spec": asdict(replace(spec, chat_copies=3))}
    assert _finished(first, other_first) is None and _finished(final, other_first) is None


def test_finished_model_reused_only_with_its_own_settings(tmp_path):
    spec = BUDGETS["ship"]
    llm = _saved(tmp_path, "llm", asdict(spec))
    stamp = {"budget": "renamed", "seed": 42, "spec": asdict(spec)}
    assert _finished(llm, stamp) is not None  # the budget's name does not matter
    assert _finished(llm, {**stamp, "seed": 1}) is None
    other_encoder = replace(spec, encoder_args={**spec.encoder_args, "max_steps": 1})
    assert _finished(llm, {**stamp, "spec": asdict(other_encoder)}) is not None  # not an LLM setting
    other_llm = replace(spec, llm_args={**spec.llm_args, "max_steps": 1})
    assert _finished(llm, {**stamp, "spec": asdict(other_llm)}) is None
    encoder = _saved(tmp_path, "encoder", asdict(spec))
    assert _finished(encoder, {**stamp, "spec": asdict(other_llm)}) is not None
    assert _finished(encoder, {**stamp, "spec": asdict(other_encoder)}) is None


def test_fields_added_later_count_as_their_default(tmp_path):
    spec = asdict(BUDGETS["ship"])
    spec["stretch_max"] = Budget.__dataclass_fields__["stretch_max"].default
    old = {k: v for k, v in spec.items() if k != "stretch_max"}  # saved before the field existed
    llm = _saved(tmp_path, "llm", old)
    assert _finished(llm, {"seed": 42, "spec": spec}) is not None
    assert _finished(llm, {"seed": 42, "spec": {**spec, "stretch_max": 7}}) is None
    (llm / REPORT_NAME).write_text("{not json")
    assert _finished(llm, {"seed": 42, "spec": spec}) is None


def test_llm_phases_follow_the_budget():
    ship = BUDGETS["ship"]
    assert llm_phases(replace(ship, spell_steps=0, passage_steps=0)) == [("text", "llm")]
    assert llm_phases(replace(ship, passage_steps=0)) == [("text", "llm_text"), ("spelled", "llm")]
    three = [("text", "llm_text"), ("spelled", "llm_spelled"), ("passages", "llm")]
    assert llm_phases(replace(ship, spell_steps=1, passage_steps=1)) == three
    # Every directory a phase is saved in has the budget fields its reuse depends on.
    assert {name for _, name in three} <= set(PART_FIELDS)


def test_spelled_phase_reused_when_only_the_passage_phase_changes(tmp_path):
    spec = replace(BUDGETS["ship"], passage_steps=10)
    stamp = {"budget": "ship", "seed": 42, "spec": asdict(spec)}
    spelled, final = _saved(tmp_path, "llm_spelled", asdict(spec)), _saved(tmp_path, "llm", asdict(spec))
    longer = {**stamp, "spec": asdict(replace(spec, passage_copies=spec.passage_copies + 1))}
    assert _finished(spelled, longer) is not None and _finished(final, longer) is None
    other_spelled = {**stamp, "spec": asdict(replace(spec, spell_repeat=0.5))}
    assert _finished(spelled, other_spelled) is None and _finished(final, other_spelled) is None


def test_build_llm_continues_from_the_latest_finished_phase(tmp_path, monkeypatch):
    from llava.demo.base_models import llm_recipe

    spec = replace(BUDGETS["ship"], passage_steps=10)
    stamp = {"budget": "ship", "seed": 42, "spec": asdict(spec)}
    _saved(tmp_path, "llm_text", asdict(spec))
    _saved(tmp_path, "llm_spelled", asdict(spec))
    built = []

    def fake_text(corpus, final, budget, seed, stamp):
        built.append(("text", final.name))
        return {"phase": "text"}

    def fake_spelled(corpus, previous_dir, final, budget, seed, stamp, previous, kind):
        built.append((kind, previous_dir.name, final.name, previous.get("phase", "saved")))
        return {"phase": kind}

    monkeypatch.setattr(llm_recipe, "_build_text_llm", fake_text)
    monkeypatch.setattr(llm_recipe, "_build_spelled_llm", fake_spelled)
    assert llm_recipe.build_llm(tmp_path, tmp_path, spec, 42, stamp) == {"phase": "passages"}
    assert built == [("passages", "llm_spelled", "llm", "saved")]  # the saved report is passed on
    # A changed spelled phase makes both later phases run again, from the (still valid) first one.
    built.clear()
    changed = replace(spec, spell_repeat=0.5)
    llm_recipe.build_llm(tmp_path, tmp_path, changed, 42, {**stamp, "spec": asdict(changed)})
    assert built == [
        ("spelled", "llm_text", "llm_spelled", "saved"),
        ("passages", "llm_spelled", "llm", "spelled"),
    ]
