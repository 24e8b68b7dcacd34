"""Reading a data config's raw YAML values safely: error context, a size bound, `${VAR}` expansion,
numbers and paths. `llava.dataset.config` builds the typed config from them."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

# Upper bound on the values of a config after YAML aliases are followed: a few aliases nested a few
# levels deep ("billion laughs") would otherwise make environment expansion take minutes.
MAX_CONFIG_VALUES = 100_000

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A malformed data config; the message names the file and the field."""


class Ctx:
    """Builds `file: field` prefixes for error messages."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path.name}: {where}: {msg}" if where else f"{self.path.name}: {msg}")


def count_values(value: Any, memo: dict[int, int]) -> int:
    """Values in a parsed YAML document with every alias followed, computed once per shared object."""
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, list):
        n = 1 + sum(count_values(v, memo) for v in value)
    elif isinstance(value, dict):
        n = 1 + sum(count_values(v, memo) for v in value.values())
    else:
        n = 1
    memo[key] = n
    return n


def check_size(raw: Any, ctx: Ctx) -> None:
    """Refuse a document nested too deeply or expanding to more than `MAX_CONFIG_VALUES` values."""
    try:
        n = count_values(raw, {})
    except RecursionError:
        raise ctx.error("", "the config is nested too deeply") from None
    if n > MAX_CONFIG_VALUES:
        raise ctx.error(
            "",
            f"the config expands to {n} values (more than {MAX_CONFIG_VALUES}); "
            "YAML aliases (*name) nested inside each other multiply it",
        )


def expand_env(value: Any, ctx: Ctx, where: str) -> Any:
    """Expand `${VAR}` / `${VAR:-default}` in every string; an unset variable without default is an error."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ctx.error(where, f"environment variable {name} is not set (in {value!r})")

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, ctx, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, ctx, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    return value


def resolve_path(path_text: str, base: Path) -> Path:
    """An absolute path as it is; a relative one against `base` (the YAML's folder), then the working
    directory, whichever exists (`base` when neither does, so the error names the expected place)."""
    p = Path(path_text).expanduser()
    if p.is_absolute():
        return p
    for candidate in (base / p, Path.cwd() / p):
        if candidate.exists():
            return candidate
    return base / p


def number(value: Any, ctx: Ctx, where: str, *, allow_none: bool = True, positive: bool = False) -> Any:
    """A finite non-negative (or, with `positive`, positive) number as a float; None passes when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ctx.error(where, f"expected a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ctx.error(
            where, f"expected a {'positive' if positive else 'non-negative'} number, got {value!r}"
        )
    return float(value)
