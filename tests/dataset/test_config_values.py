"""Raw YAML values of a data config: errors name the file and field, env expansion, numbers, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava.dataset.config_values import (
    MAX_CONFIG_VALUES,
    ConfigError,
    Ctx,
    check_size,
    count_values,
    expand_env,
    number,
    resolve_path,
)

CTX = Ctx(Path("/x/data.yml"))


def test_env_expansion_with_defaults_and_a_named_error(monkeypatch):
    monkeypatch.setenv("ROOT", "/data")
    monkeypatch.delenv("MISSING", raising=False)
    raw = {"DATA": [{"a": "${ROOT}/m", "b": "${MISSING:-fallback}", "n": 3}]}
    assert expand_env(raw, CTX, "") == {"DATA": [{"a": "/data/m", "b": "fallback", "n": 3}]}
    with pytest.raises(ConfigError, match=r"^data.yml: DATA\[0\].c: environment variable MISSING is not set"):
        expand_env({"DATA": [{"c": "${MISSING}"}]}, CTX, "")


def test_shared_aliases_count_every_time_they_are_used():
    leaf = list(range(10))
    doc = {"a": [leaf, leaf, leaf]}  # what YAML aliases produce: one object, used three times
    assert count_values(doc, {}) == 1 + 1 + 3 * 11
    wide = [leaf] * (MAX_CONFIG_VALUES // 11 + 1)
    with pytest.raises(ConfigError, match="expands to .* values"):
        check_size({"DATA": wide}, CTX)


@pytest.mark.parametrize("bad", [True, "3", float("nan"), float("inf"), -1])
def test_numbers_are_finite_and_non_negative(bad):
    with pytest.raises(ConfigError, match=r"^data.yml: f: expected a"):
        number(bad, CTX, "f")


def test_number_options():
    assert number(2, CTX, "f") == 2.0 and number(None, CTX, "f") is None
    with pytest.raises(ConfigError, match="positive number, got 0"):
        number(0, CTX, "f", positive=True)
    with pytest.raises(ConfigError, match="expected a number, got None"):
        number(None, CTX, "f", allow_none=False)


def test_relative_paths_prefer_the_yaml_folder(tmp_path, monkeypatch):
    base, cwd = tmp_path / "configs", tmp_path / "cwd"
    (base / "d").mkdir(parents=True)
    (cwd / "d").mkdir(parents=True)
    (cwd / "only_cwd").mkdir()
    monkeypatch.chdir(cwd)
    assert resolve_path("d", base) == base / "d"
    assert resolve_path("only_cwd", base) == Path.cwd() / "only_cwd"
    assert resolve_path("nowhere", base) == base / "nowhere"
    assert resolve_path("/abs/p", base) == Path("/abs/p")
