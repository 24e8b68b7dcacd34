"""The shipped tiny base models: hash-checked Hugging Face directories under `llava/demo/assets/`.

Building competent tiny base models takes longer than a study run may spend, so they ship built,
as a real user downloads `meta-llama/Llama-3.1-8B-Instruct` and `facebook/hubert-large-ls960-ft`:

```
llava/demo/assets/base_models/llm/       config.json, model.safetensors, tokenizer files (chat template)
llava/demo/assets/base_models/encoder/   config.json, model.safetensors, preprocessor_config.json, vocab
llava/demo/assets/base_models.json       sha256 of every file, the build command, corpus, figures
```

`shipped_base_models(dest)` verifies every file against the recorded sha256 and refuses (raises
`ShippedModelsError`, naming the files) when one is missing, altered or unexpected; it then copies
the two directories into `dest` and returns it. `python -m llava.demo.base_models.ship` rebuilds
them from the corpus seed and checks the rebuild against the same record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
MODELS_DIR = ASSETS_DIR / "base_models"  # holds llm/ and encoder/
RECORD_PATH = ASSETS_DIR / "base_models.json"
MODEL_NAMES = ("llm", "encoder")
# Written by the trainers next to the weights; holds wall times, so it is not part of a shipped model.
EXCLUDED_FILES = frozenset({"train_report.json"})


class ShippedModelsError(RuntimeError):
    """Shipped base-model files that are missing or whose content does not match the record."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_files(root: str | os.PathLike, names: tuple[str, ...] = MODEL_NAMES) -> dict[str, str]:
    """`{"llm/config.json": sha256, ...}` for every file of `root/llm` and `root/encoder` (or `names`)."""
    root = Path(root)
    out: dict[str, str] = {}
    for name in names:
        folder = root / name
        if not folder.is_dir():
            raise ShippedModelsError(f"{folder}: model directory not found")
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name not in EXCLUDED_FILES:
                out[path.relative_to(root).as_posix()] = sha256_file(path)
    return out


def compare_files(actual: dict[str, str], expected: dict[str, str]) -> list[str]:
    """Differences between two `model_files` maps, one readable line each (empty: identical)."""
    problems = [f"{rel}: missing" for rel in sorted(set(expected) - set(actual))]
    problems += [f"{rel}: not in the record" for rel in sorted(set(actual) - set(expected))]
    problems += [
        f"{rel}: sha256 {actual[rel][:12]}... != recorded {expected[rel][:12]}..."
        for rel in sorted(set(actual) & set(expected))
        if actual[rel] != expected[rel]
    ]
    return problems


def read_record(path: str | os.PathLike = RECORD_PATH) -> dict:
    """The shipped record (hashes, build command, figures)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShippedModelsError(
            f"{path}: no record of shipped base models (build them with python -m llava.demo.base_models.ship)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ShippedModelsError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(record.get("files"), dict) or not record["files"]:
        raise ShippedModelsError(f"{path}: field 'files' (path -> sha256) is missing or empty")
    return record


def verify_models(root: str | os.PathLike, record: dict) -> None:
    """Raise `ShippedModelsError` unless `root/llm` and `root/encoder` hold exactly the recorded files."""
    try:
        actual = model_files(root)
    except ShippedModelsError as exc:
        raise ShippedModelsError(f"refusing the base models in {root}: {exc}") from None
    problems = compare_files(actual, record["files"])
    if problems:
        raise ShippedModelsError(
            f"refusing the base models in {root}: their files do not match the recorded sha256 "
            f"({len(problems)} problem(s)): " + "; ".join(problems[:8])
        )


def shipped_base_models(
    dest: str | os.PathLike | None = None,
    models_dir: str | os.PathLike = MODELS_DIR,
    record_path: str | os.PathLike = RECORD_PATH,
) -> Path:
    """The shipped tiny base models, verified: `DEST/llm` and `DEST/encoder` (HF directories).

    Every file is checked against the sha256 record first; a missing, altered or extra file raises
    `ShippedModelsError`. With `dest=None` the verified shipped directory itself is returned (read it,
    do not write into it). Otherwise the two directories are copied into `dest` (replacing what is
    there, each under a temporary name until complete), the copy is verified again, `DEST/report.json`
    gets the recorded figures (text topline, dev CER, sizes, build command), and `dest` is returned; a
    `dest` already holding a verified copy is not copied again.
    """
    record = read_record(record_path)
    if dest is None:
        verify_models(models_dir, record)
        return Path(models_dir)
    dest = Path(dest)
    try:
        verify_models(dest, record)
        _write_report(dest, record)
        return dest  # already installed
    except ShippedModelsError:
        pass
    verify_models(models_dir, record)
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_NAMES:
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}."))
        try:
            for src in sorted(Path(models_dir, name).rglob("*")):
                if src.is_file() and src.name not in EXCLUDED_FILES:
                    target = tmp / src.relative_to(Path(models_dir, name))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, target)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private
            if (dest / name).exists():
                shutil.rmtree(dest / name)
            os.replace(tmp, dest / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    verify_models(dest, record)
    _write_report(dest, record)
    return dest


def _write_report(dest: Path, record: dict) -> None:
    """DEST/report.json: the recorded figures, in the layout of the builder's report (`summary`)."""
    report = {
        "source": "shipped",
        "summary": record.get("figures", {}),
        **{
            k: record[k]
            for k in ("command", "budget", "seed", "seeds", "corpus", "versions", "build_time_s")
            if k in record
        },
    }
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".report.")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, dest / "report.json")
