from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from llava.dataset.config import (
    DEFAULT_PROMPTS_PATH,
    ConfigError,
    load_data_config,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _write(tmp_path: Path, text: str, name: str = "data.yml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def mustc(tmp_path):
    _touch(tmp_path / "mustc" / "en-de" / "train.parquet")
    _touch(tmp_path / "mustc" / "en-de" / "tst-COMMON.parquet")
    return tmp_path / "mustc"


# ----------------------------------------------------------------------------- full configs
def test_parse_mustc_with_env_and_defaults(tmp_path, mustc, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    p = _write(
        tmp_path,
        """
        DATA:
          - MuSTC:
              datapath: ${DATA_ROOT}/mustc
              task: ST
              languages: [en-de]
              partitions:
                train:
                  amount: "10:20%"
                  min_duration: 1
                  max_duration: 45
                  destination: train
                  weight: 2.5
                tst-COMMON:
                  amount: ":100%"
                  destination: test
        """,
    )
    cfg = load_data_config(p)
    assert cfg.prompts_path == DEFAULT_PROMPTS_PATH
    (entry,) = cfg.datasets
    assert entry.datapath == mustc and entry.task == "ST" and entry.languages == ["en-de"]
    train, test = entry.partitions
    assert (train.amount.start, train.amount.stop, train.amount.percent) == (10, 20, True)
    assert (train.min_duration, train.max_duration, train.weight) == (1.0, 45.0, 2.5)
    assert test.min_duration is None and test.weight == 1.0
    (src,) = cfg.for_destination("train")
    assert src.path == mustc / "en-de" / "train.parquet"
    assert (src.source_language, src.target_language) == ("en", "de")
    assert src.columns["transcript"] == "sentence" and src.columns["translation"] == "translation"
    assert cfg.for_destination("test")[0].path.name == "tst-COMMON.parquet"
    assert cfg.for_destination("eval") == []


def test_env_default_and_unset(tmp_path, mustc, monkeypatch):
    monkeypatch.delenv("NOPE_ROOT", raising=False)
    body = """
        DATA:
          - MuSTC:
              datapath: {path}
              task: ASR
              languages: [en-de]
              partitions: {{train: {{destination: train}}}}
        """
    p = _write(tmp_path, body.format(path="${NOPE_ROOT:-" + str(mustc) + "}"))
    assert load_data_config(p).sources[0].path.parent.parent == mustc
    p = _write(tmp_path, body.format(path="${NOPE_ROOT}/mustc"))
    with pytest.raises(
        ConfigError, match=r"data\.yml: DATA\[0\]\.MuSTC\.datapath: environment variable NOPE_ROOT"
    ):
        load_data_config(p)


def test_relative_paths_resolve_against_yaml_folder(tmp_path, mustc, monkeypatch):
    (tmp_path / "my_prompts.json").write_text('{"ASR": ["Say it."]}')
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    monkeypatch.chdir(sub)
    p = _write(
        tmp_path,
        """
        INPUTS_TEXT_LIST: my_prompts.json
        DATA:
          - MuSTC:
              datapath: mustc
              task: ASR
              languages: [en-de]
              partitions: {train: {destination: train}}
        """,
    )
    cfg = load_data_config(p)
    assert cfg.prompts_path == tmp_path / "my_prompts.json"
    assert cfg.sources[0].path == tmp_path / "mustc" / "en-de" / "train.parquet"


@pytest.mark.parametrize("folder", ["parquet_files", "parque_files"])
def test_gigaspeech_accepts_both_folder_spellings(tmp_path, folder):
    _touch(tmp_path / "giga" / folder / "gigaspeech_train.parquet")
    p = _write(
        tmp_path,
        f"""
        DATA:
          - Gigaspeech:
              datapath: {tmp_path / "giga"}
              task: ASR
              languages: [en]
              partitions: {{train: {{destination: train}}}}
        """,
    )
    (src,) = load_data_config(p).sources
    assert src.path.parent.name == folder and src.columns["transcript"] == "transcript"


def test_other_types_paths(tmp_path):
    _touch(tmp_path / "sqa" / "spoken_squad_test.parquet")
    _touch(tmp_path / "nwp" / "en-de_train_processed.parquet")
    p = _write(
        tmp_path,
        f"""
        DATA:
          - Spoken_SQuAD:
              datapath: {tmp_path / "sqa"}
              task: SQA
              partitions: {{test: {{destination: test}}}}
          - Giga_NWP:
              datapath: {tmp_path / "nwp"}
              task: ASR
              languages: [en-de]
              partitions: {{train: {{destination: train}}}}
        """,
    )
    cfg = load_data_config(p)
    sqa, nwp = cfg.sources
    assert sqa.task == "SQA" and sqa.columns["question"] == "question"
    assert (
        nwp.columns["word_boundaries"] == "word_boundaries" and nwp.columns["transcript"] == "transcription"
    )


def test_generic_parquet_with_columns_and_glob(tmp_path):
    for shard in ("a", "b"):
        _touch(tmp_path / "corpus" / f"train-{shard}.parquet")
    p = _write(
        tmp_path,
        f"""
        DATA:
          - Parquet:
              datapath: {tmp_path / "corpus"}
              task: ASR
              files: "{{partition}}-*.parquet"
              columns: {{transcript: text, duration: seconds}}
              partitions: {{train: {{destination: train}}}}
        """,
    )
    sources = load_data_config(p).sources
    assert [s.path.name for s in sources] == ["train-a.parquet", "train-b.parquet"]
    assert sources[0].columns["transcript"] == "text" and sources[0].columns["audio"] == "audio"


# ----------------------------------------------------------------------------- errors
_BASE = """
DATA:
  - MuSTC:
      datapath: {root}
      task: ST
      languages: [en-de]
      partitions:
        train:
          amount: ":100%"
          destination: train
  - MuSTC:
      datapath: {root}
      task: {task}
      languages: {languages}
      partitions:
        train:
          amount: "{amount}"
          min_duration: {min_duration}
          max_duration: 10
          destination: {destination}
"""


@pytest.mark.parametrize(
    "override, match",
    [
        (
            dict(amount="abc"),
            r'data\.yml: DATA\[1\]\.MuSTC\.partitions\.train\.amount: expected ":X%" or "X1:X2%", got \'abc\'',
        ),
        (dict(task="SQA"), r"DATA\[1\]\.MuSTC\.task: expected one of \['ASR', 'ST'\]"),
        (dict(languages="[en]"), r"DATA\[1\]\.MuSTC\.languages\[0\]: .*needs a \"src-tgt\" pair"),
        (dict(languages="en-de"), None),  # a single string is accepted
        (
            dict(min_duration="-1"),
            r"DATA\[1\]\.MuSTC\.partitions\.train\.min_duration: expected a non-negative",
        ),
        (dict(min_duration="20"), r"min_duration 20 is larger than max_duration 10"),
        (dict(min_duration="fast"), r"min_duration: expected a number, got 'fast'"),
        (
            dict(destination="dev"),
            r"partitions\.train\.destination: expected one of \['train', 'eval', 'test'\]",
        ),
    ],
)
def test_field_errors(tmp_path, mustc, override, match):
    values = dict(
        root=mustc, task="ASR", languages="[en-de]", amount=":50%", min_duration="1", destination="eval"
    )
    values.update(override)
    p = _write(tmp_path, _BASE.format(**values))
    if match is None:
        load_data_config(p)
        return
    with pytest.raises(ConfigError, match=match):
        load_data_config(p)


@pytest.mark.parametrize(
    "text, match",
    [
        ("DATA: []", r"data\.yml: DATA: expected a non-empty list"),
        ("foo: 1\nDATA: []", r"data\.yml: foo: unknown key"),
        (
            "DATA:\n  - Librispeech: {}",
            r"DATA\[0\]: unknown dataset type 'Librispeech'; known types: \['MuSTC'",
        ),
        ("DATA: [: bad", r"data\.yml: invalid YAML"),
        ("- just a list", r"expected a mapping"),
        (
            "DATA:\n  - MuSTC: {datapath: x, task: ASR, languages: [en-de], partitions: {train: {amout: ':1%', destination: train}}}",
            r"DATA\[0\]\.MuSTC\.partitions\.train\.amout: unknown key",
        ),
        (
            "DATA:\n  - MuSTC: {datapath: x, task: ASR, languages: [en-de], partitions: {train: {amount: ':1%'}}}",
            r"partitions\.train\.destination: missing",
        ),
        (
            "DATA:\n  - MuSTC: {datapath: x, task: ASR, languages: [en-de], partitions: {train: {destination: train, weight: 0}}}",
            r"partitions\.train\.weight: expected a positive number",
        ),
        (
            "DATA:\n  - MuSTC: {task: ASR, languages: [en-de], partitions: {train: {destination: train}}}",
            r"DATA\[0\]\.MuSTC\.datapath: expected a folder path",
        ),
        (
            "DATA:\n  - Parquet: {datapath: x, task: ASR, columns: {speech: a}, partitions: {train: {destination: train}}}",
            r"DATA\[0\]\.Parquet\.columns\.speech: unknown field",
        ),
        (
            "DATA:\n  - Parquet: {datapath: x, task: ASR, files: '{split}.parquet', partitions: {train: {destination: train}}}",
            r"DATA\[0\]\.Parquet\.files\[0\]: bad template",
        ),
        ("INPUTS_TEXT_LIST: nowhere.json\nDATA: []", r"INPUTS_TEXT_LIST: prompt file not found"),
    ],
)
def test_structural_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_data_config(_write(tmp_path, text))


def test_missing_parquet_names_path(tmp_path):
    p = _write(
        tmp_path,
        f"""
        DATA:
          - MuSTC:
              datapath: {tmp_path / "absent"}
              task: ASR
              languages: [en-fr]
              partitions: {{dev: {{destination: eval}}}}
        """,
    )
    with pytest.raises(
        ConfigError,
        match=r"DATA\[0\]\.MuSTC\.partitions\.dev: parquet file not found: .*absent/en-fr/dev\.parquet",
    ):
        load_data_config(p)
    assert load_data_config(p, check_files=False).sources[0].path.name == "dev.parquet"


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="data config not found"):
        load_data_config(tmp_path / "nope.yml")


REPO = Path(__file__).resolve().parents[2]
TEMPLATES = [
    "scripts/data_configs/pretrain_asr_mustc_giga.yml",
    "scripts/data_configs/pretrain_mixed_nwp_mustc_giga.yml",
    "scripts/data_configs/finetune_mixed_tasks.yml",
    "eval/mustc_tst_common_asr.yml",
    "eval/mustc_tst_common_st.yml",
    "eval/spoken_squad_test.yml",
]


@pytest.mark.parametrize("name", TEMPLATES)
def test_shipped_real_data_templates_parse(tmp_path, monkeypatch, name):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    cfg = load_data_config(REPO / name, check_files=False)
    for src in cfg.sources:
        _touch(src.path)
    cfg = load_data_config(REPO / name)  # every file the template names is found where it says
    assert cfg.sources and all(str(s.path).startswith(str(tmp_path)) for s in cfg.sources)
    if name.startswith("eval/"):
        assert {s.partition.destination for s in cfg.sources} == {"test"}


# ----------------------------------------------------------------------------- the original's layouts
def test_original_layouts_resolve(tmp_path):
    """MLS training shards and test file, Giga_NWP with one language and `_processed*` shards."""
    for name in ("mls_train_chunk_0", "mls_train_chunk_1", "mls_test"):
        _touch(tmp_path / "data" / "mls" / "parquet_files" / f"{name}.parquet")
    for name in ("en_train_processed", "en_train_processed_1"):
        _touch(tmp_path / "data" / "Giga_NWP" / f"{name}.parquet")
    p = _write(
        tmp_path,
        """
        INPUTS_TEXT_LIST: "llava/dataset/INPUTS_TEXT_LIST.json"
        DATA:
            - MLS:
                datapath: "data/mls"
                task: "META"
                languages: ["en"]
                partitions:
                    train: {amount: ":100%", min_duration: 1, max_duration: 150, destination: "train"}
                    test: {amount: ":100%", min_duration: 1, max_duration: null, destination: "test"}
            - Giga_NWP:
                datapath: "data/Giga_NWP"
                task: "ASR"
                languages: ["en"]
                partitions:
                    train: {amount: ":100%", min_duration: 1, max_duration: 45, destination: "train"}
        """,
    )
    cfg = load_data_config(p)
    # the original's never-published instruction file: the shipped prompts stand in
    assert cfg.prompts_path == DEFAULT_PROMPTS_PATH
    names = [(s.task, s.path.name, s.name) for s in cfg.sources]
    assert names == [
        ("META", "mls_train_chunk_0.parquet", "MLS.META.en:mls_train_chunk_0"),
        ("META", "mls_train_chunk_1.parquet", "MLS.META.en:mls_train_chunk_1"),
        ("META", "mls_test.parquet", "MLS.META.en:mls_test"),
        ("ASR", "en_train_processed.parquet", "Giga_NWP.ASR.en:en_train_processed"),
        ("ASR", "en_train_processed_1.parquet", "Giga_NWP.ASR.en:en_train_processed_1"),
    ]
    assert cfg.sources[0].columns["speaking_rate"] == "speaking_rate"
    # another missing instruction file is still an error
    p.write_text(p.read_text().replace("INPUTS_TEXT_LIST.json", "MINE.json"))
    with pytest.raises(ConfigError, match="INPUTS_TEXT_LIST: prompt file not found"):
        load_data_config(p)


def test_same_stem_in_a_glob_gets_distinct_file_keys(tmp_path):
    for shard in ("a", "b"):
        _touch(tmp_path / "corpus" / shard / "train.parquet")
    p = _write(
        tmp_path,
        f"""
        DATA:
          - Parquet:
              datapath: {tmp_path / "corpus"}
              task: ASR
              files: "*/{{partition}}.parquet"
              partitions: {{train: {{destination: train}}}}
        """,
    )
    names = [s.name for s in load_data_config(p).sources]
    assert names == ["Parquet.ASR.en:a/train", "Parquet.ASR.en:b/train"]


def test_test_partition_of_a_task_without_metric_names_the_field(tmp_path):
    _touch(tmp_path / "c" / "test.parquet")
    p = _write(
        tmp_path,
        f"""
        DATA:
          - Parquet:
              datapath: {tmp_path / "c"}
              task: INSTRUCT
              partitions: {{test: {{destination: test}}}}
        """,
    )
    cfg = load_data_config(p)  # training on it is fine; scoring it is not
    with pytest.raises(
        ConfigError, match=r"data\.yml: DATA\[0\]\.Parquet\.task: task 'INSTRUCT' has no metric"
    ):
        cfg.for_destination("test")


def test_prompt_format_and_no_punctuation_keys(tmp_path, mustc):
    text = f"""
        PROMPT_FORMAT: instruction_first
        DATA:
          - MuSTC:
              datapath: {mustc}
              task: ASR
              languages: [en-de]
              no_punctuation: true
              partitions: {{train: {{destination: train}}}}
        """
    cfg = load_data_config(_write(tmp_path, text))
    assert cfg.prompt_format == "instruction_first" and cfg.sources[0].no_punctuation
    with pytest.raises(
        ConfigError, match=r"PROMPT_FORMAT: unknown prompt format 'paper'; known: \['original'"
    ):
        load_data_config(_write(tmp_path, text.replace("instruction_first", "paper")))
    with pytest.raises(ConfigError, match=r"no_punctuation: expected true or false"):
        load_data_config(_write(tmp_path, text.replace("no_punctuation: true", "no_punctuation: 1")))


def test_yaml_alias_bomb_is_rejected_quickly(tmp_path):
    import time

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]")
    text = "DATA:\n  - Parquet:\n      datapath: x\n      additional_args: {" + ", ".join(levels) + "}\n"
    p = tmp_path / "bomb.yml"
    p.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yml: the config expands to \d+ values"):
        load_data_config(p)
    assert time.perf_counter() - start < 2.0
