from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from llava.dataset.audio import decode_audio
from llava.dataset.dataset import SpeechDataset
from llava.dataset.importers import (
    DEFAULT_QUESTION,
    ImportFormatError,
    QuestionSource,
    import_nemo,
    import_slam,
    main,
    write_parquet,
)
from llava.dataset.prompts import PromptBank


def _tone(seconds: float, freq: float, sr: int) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def wavs(tmp_path: Path) -> Path:
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "wav" / "long.wav", _tone(2.0, 300, 16000), 16000)
    sf.write(tmp_path / "wav" / "b.flac", _tone(0.5, 500, 8000), 8000)
    return tmp_path


def test_nemo_roundtrip_with_offsets_and_prompt(wavs):
    manifest = _jsonl(
        wavs / "sqa.jsonl",
        [
            {
                "audio_filepath": "wav/long.wav",
                "offset": 0.5,
                "duration": 1.0,
                "question": "Who?",
                "answer": "Bo",
            },
            {"audio_filepath": str(wavs / "wav" / "b.flac"), "context": "Where?", "answer": " here "},
        ],
    )
    (wavs / "prompt.txt").write_text("Answer using the audio. Question: {context}")
    out = wavs / "out" / "spoken_squad_train.parquet"
    assert import_nemo(manifest, out, prompt_template=wavs / "prompt.txt") == 2
    table = pq.read_table(out).to_pylist()
    assert [r["question"] for r in table] == [
        "Answer using the audio. Question: Who?\n<audio>",
        "Answer using the audio. Question: Where?\n<audio>",
    ]
    assert [r["answer"] for r in table] == ["Bo", "here"]
    assert table[0]["duration"] == pytest.approx(1.0) and table[1]["duration"] == pytest.approx(0.5)
    cut = decode_audio(table[0]["audio"], 16000)
    np.testing.assert_allclose(cut, _tone(2.0, 300, 16000)[8000:24000], atol=1e-4)  # offset 0.5 s, 1 s long
    assert len(decode_audio(table[1]["audio"], 16000)) == 8000  # 8 kHz stored as is, resampled on decode
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no temp file left

    # the imported file is a Spoken_SQuAD source as is
    cfg = wavs / "data.yml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            DATA:
              - Spoken_SQuAD:
                  datapath: {out.parent}
                  task: SQA
                  partitions: {{train: {{destination: test}}}}
            """
        )
    )
    # the layout that uses a question carrying <audio> as the whole prompt
    ds = SpeechDataset.from_config(cfg, "test", prompt_format="instruction_first")
    assert ds[0].prompt == table[0]["question"] and ds[0].target == "Bo"
    # the paper's layout: audio first, then the fixed instruction and the question
    ds = SpeechDataset.from_config(cfg, "test")
    instruction = PromptBank.load().instructions("SQA")[0]
    assert ds[0].prompt == f"<audio>\n{instruction} Answer using the audio. Question: Who?"


def test_slam_roundtrip(wavs):
    data = _jsonl(
        wavs / "asr.jsonl",
        [
            {"key": "u1", "source": "wav/long.wav", "target": "hello there"},
            {"key": 2, "source": "wav/b.flac", "target": "x"},
        ],
    )
    out = wavs / "slam.parquet"
    assert main(["slam", str(data), str(out), "--audio-format", "wav"]) == 0
    rows = pq.read_table(out).to_pylist()
    assert [(r["key"], r["transcript"]) for r in rows] == [("u1", "hello there"), ("2", "x")]
    assert rows[0]["duration"] == pytest.approx(2.0)
    np.testing.assert_allclose(decode_audio(rows[0]["audio"], 16000), _tone(2.0, 300, 16000), atol=1e-4)


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", r"bad\.jsonl:2: invalid JSON"),
        ('["a"]', r"bad\.jsonl:2: expected a JSON object"),
        (
            '{"audio_filepath": "wav/b.flac", "question": " ", "answer": "a"}',
            r"bad\.jsonl:2: field 'question'",
        ),
        ('{"audio_filepath": "wav/b.flac", "question": "q"}', r"bad\.jsonl:2: missing field 'answer'"),
        (
            '{"audio_filepath": "wav/none.wav", "question": "q", "answer": "a"}',
            r"bad\.jsonl:2: cannot read audio",
        ),
        (
            '{"audio_filepath": "wav/b.flac", "question": "q", "answer": "a", "offset": -1}',
            r"bad\.jsonl:2: field 'offset'",
        ),
        (
            '{"audio_filepath": "wav/b.flac", "question": "q", "answer": "a", "offset": 9}',
            r"bad\.jsonl:2: audio .* is empty",
        ),
    ],
)
def test_nemo_bad_line_names_file_and_line(wavs, line, match):
    good = json.dumps({"audio_filepath": "wav/b.flac", "question": "q", "answer": "a"})
    manifest = _jsonl(wavs / "bad.jsonl", [good, line])
    out = wavs / "bad.parquet"
    with pytest.raises(ImportFormatError, match=match):
        import_nemo(manifest, out)
    assert not out.exists() and not list(wavs.glob(".bad.parquet.*"))


def test_slam_bad_line_and_cli_exit_code(wavs, capsys):
    data = _jsonl(wavs / "s.jsonl", [{"key": "a", "source": "wav/b.flac"}])
    with pytest.raises(ImportFormatError, match=r"s\.jsonl:1: missing field 'target'"):
        import_slam(data, wavs / "s.parquet")
    assert main(["slam", str(data), str(wavs / "s.parquet")]) == 2
    assert "s.jsonl:1: missing field 'target'" in capsys.readouterr().err


def test_cli_module_entry(wavs):
    manifest = _jsonl(wavs / "m.jsonl", [{"audio_filepath": "wav/b.flac", "question": "q", "answer": "a"}])
    proc = subprocess.run(
        [sys.executable, "-m", "llava.dataset.importers", "nemo", str(manifest), str(wavs / "m.parquet")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 rows" in proc.stdout


def test_write_parquet_types(tmp_path):
    rows = [{"audio": {"bytes": b"x", "path": None}, "n": i} for i in range(5)]
    write_parquet(rows, tmp_path / "t.parquet", row_group_size=2)
    table = pq.read_table(tmp_path / "t.parquet")
    assert str(table.schema.field("audio").type) == "struct<bytes: binary, path: string>"
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.num_row_groups == 3
    with pytest.raises(ValueError, match="nothing to write"):
        write_parquet([], tmp_path / "e.parquet")


def test_write_parquet_uses_the_usual_file_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_parquet([{"n": 1}], tmp_path / "m.parquet")
    finally:
        os.umask(old)
    assert (tmp_path / "m.parquet").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


# ----------------------------------------------------------------------------- NeMo question files
def _lines(n: int, **extra) -> list[dict]:
    return [{"audio_filepath": "wav/b.flac", "answer": f"a{i}", **extra} for i in range(n)]


def _questions(path: Path) -> list[str]:
    return [r["question"].removesuffix("\n<audio>") for r in pq.read_table(path).to_pylist()]


def test_nemo_question_is_optional_with_nemos_default(wavs):
    manifest = _jsonl(
        wavs / "m.jsonl", [*_lines(2), {"audio_filepath": "wav/b.flac", "question": "Who?", "answer": "x"}]
    )
    import_nemo(manifest, wavs / "m.parquet")
    assert _questions(wavs / "m.parquet") == [DEFAULT_QUESTION, DEFAULT_QUESTION, "Who?"]


def test_nemo_question_file_draws_a_seeded_question_per_line(wavs):
    qfile = wavs / "q.txt"
    qfile.write_text("transcribe the audio\n\nwhat is said?\nrepeat the words\n")
    lines = _lines(24)
    lines[5] = {"audio_filepath": "wav/b.flac", "context": "Own question?", "answer": "y"}
    manifest = _jsonl(wavs / "m.jsonl", lines)
    import_nemo(manifest, wavs / "a.parquet", question_files=[qfile], seed=7)
    import_nemo(manifest, wavs / "b.parquet", question_files=[qfile], seed=7)
    import_nemo(manifest, wavs / "c.parquet", question_files=[qfile], seed=8)
    a, b, c = (_questions(wavs / f"{x}.parquet") for x in "abc")
    assert a[5] == "Own question?"  # a line's own question wins over the file (as in NeMo)
    drawn = a[:5] + a[6:]
    assert set(drawn) == {"transcribe the audio", "what is said?", "repeat the words"}  # blank line ignored
    assert a == b and a != c  # seeded: same seed, same draws
    # each line's draw depends on (seed, manifest, line) only, not on the lines read before it
    assert a[10] == QuestionSource([qfile], seed=7).question(0, 11)


def test_nemo_one_question_file_per_manifest(wavs):
    asr, st = wavs / "asr.txt", wavs / "st.txt"
    asr.write_text("transcribe it\nwrite down the words\n")
    st.write_text("translate into German\ngive the German translation\n")
    m1, m2 = _jsonl(wavs / "dev_asr.jsonl", _lines(12)), _jsonl(wavs / "dev_st.jsonl", _lines(12))
    # a folder as output: one parquet per manifest (e.g. two named validation sets)
    assert import_nemo([m1, m2], wavs / "out", question_files=[asr, st]) == 24
    assert set(_questions(wavs / "out" / "dev_asr.parquet")) == {"transcribe it", "write down the words"}
    assert set(_questions(wavs / "out" / "dev_st.parquet")) == {
        "translate into German",
        "give the German translation",
    }


def test_nemo_question_files_not_matching_the_manifests_are_shared(wavs):
    files = []
    for i in range(3):
        files.append(wavs / f"q{i}.txt")
        files[-1].write_text(f"question {i}\n")
    m1, m2 = _jsonl(wavs / "one.jsonl", _lines(15)), _jsonl(wavs / "two.jsonl", _lines(15))
    assert import_nemo([m1, m2], wavs / "all.parquet", question_files=files) == 30
    rows = pq.read_table(wavs / "all.parquet").to_pylist()
    by_manifest = {"one": set(), "two": set()}
    for r in rows:
        by_manifest[r["id"].split(":")[0]].add(r["question"].removesuffix("\n<audio>"))
    # 3 files for 2 manifests: every line draws from all of them
    assert by_manifest["one"] == by_manifest["two"] == {"question 0", "question 1", "question 2"}


def test_nemo_prompt_template_wraps_drawn_questions_and_old_flag_name_works(wavs):
    (wavs / "q.txt").write_text("what is said?\n")
    (wavs / "t.txt").write_text("Listen. {context}")
    manifest = _jsonl(wavs / "m.jsonl", _lines(1))
    for flag in ("--prompt-template", "--prompt-file"):
        out = wavs / f"{flag}.parquet"
        assert (
            main(
                [
                    "nemo",
                    str(manifest),
                    str(out),
                    "--question-file",
                    str(wavs / "q.txt"),
                    flag,
                    str(wavs / "t.txt"),
                ]
            )
            == 0
        )
        assert _questions(out) == ["Listen. what is said?"]


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_nemo_missing_or_empty_question_file_names_it(wavs, capsys, content):
    qfile = wavs / "questions.txt"
    if content is not None:
        qfile.write_text(content)
    manifest = _jsonl(wavs / "m.jsonl", _lines(1))
    what = "not found" if content is None else "is empty"
    with pytest.raises(ImportFormatError, match=rf"questions\.txt: question file {what}"):
        import_nemo(manifest, wavs / "m.parquet", question_files=[qfile])
    assert main(["nemo", str(manifest), str(wavs / "m.parquet"), "--question-file", str(qfile)]) == 2
    assert f"questions.txt: question file {what}" in capsys.readouterr().err
    assert not (wavs / "m.parquet").exists()


def test_nemo_cli_several_manifests_and_question_files(wavs):
    (wavs / "a.txt").write_text("qa\n")
    (wavs / "b.txt").write_text("qb\n")
    m1, m2 = _jsonl(wavs / "x.jsonl", _lines(2)), _jsonl(wavs / "y.jsonl", _lines(3))
    argv = ["nemo", str(m1), str(m2), str(wavs / "o.parquet"), "--question-file", str(wavs / "a.txt"),
            "--context-file", str(wavs / "b.txt")]  # fmt: skip
    assert main(argv) == 0
    assert _questions(wavs / "o.parquet") == ["qa"] * 2 + ["qb"] * 3
