from __future__ import annotations

import json
from dataclasses import asdict, replace

from llava.demo.base_models.build import BUDGETS, PART_FIELDS, REPORT_NAME, Budget, _finished


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
