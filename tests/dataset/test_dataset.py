from __future__ import annotations

import json
import shutil
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from llava.dataset.audio import encode_audio
from llava.dataset.collator import SpeechCollator
from llava.dataset.config import ConfigError
from llava.dataset.dataset import SpeechDataset
from llava.dataset.importers import write_parquet
from llava.dataset.interleave import InterleaveOptions
from llava.dataset.prompts import PromptBank
from llava.dataset.sampler import DurationBatchSampler
from llava.dataset.skips import DataError, SkippedRow
from llava.tokenization import add_audio_token
from tests.helpers import nan_wav

SR = 16000


def _tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """MuSTC en-de (20 rows, one with NaN audio) + Spoken-SQuAD (10 rows) + a config mixing them."""
    rows = []
    for i in range(20):
        d = 0.3 + 0.05 * i
        words = [f"w{j}" for j in range(12)]
        wb = [[j * d / 12, (j + 1) * d / 12, w] for j, w in enumerate(words)]
        rows.append(
            {
                "audio": encode_audio(_tone(d), SR),
                "sentence": " ".join(words),
                "translation": f"satz {i}",
                "duration": d,
                "word_boundaries": json.dumps(wb),
            }
        )
    rows[7]["audio"] = nan_wav(0.65, SR)
    (tmp_path / "mustc" / "en-de").mkdir(parents=True)
    write_parquet(rows, tmp_path / "mustc" / "en-de" / "train.parquet")
    write_parquet(rows[:6], tmp_path / "mustc" / "en-de" / "dev.parquet")
    sqa = [
        {
            "audio": encode_audio(_tone(0.5), SR),
            "question": f"q{i}?\n<audio>",
            "answer": f"a{i}",
            "duration": 0.5,
        }
        for i in range(10)
    ]
    write_parquet(sqa, tmp_path / "sqa" / "spoken_squad_train.parquet")
    (tmp_path / "data.yml").write_text(
        textwrap.dedent(
            f"""
            DATA:
              - MuSTC:
                  datapath: {tmp_path / "mustc"}
                  task: ST
                  languages: [en-de]
                  partitions:
                    train: {{amount: ":100%", destination: train, weight: 1.0}}
                    dev: {{destination: eval}}
              - Spoken_SQuAD:
                  datapath: {tmp_path / "sqa"}
                  task: SQA
                  partitions:
                    train: {{amount: ":100%", destination: train, weight: 2.5, max_duration: 10}}
            """
        )
    )
    return tmp_path / "data.yml"


def _by_source(ds: SpeechDataset) -> Counter:
    return Counter(ds.sources[int(s)].spec.dataset_type for s in ds.index[:, 0])


def test_weighted_mixing_and_durations(corpus):
    ds = SpeechDataset.from_config(corpus, "train", seed=1)
    assert _by_source(ds) == {"MuSTC": 20, "Spoken_SQuAD": 25}
    assert len(ds) == len(ds.durations) == 45
    # weight 2.5: every SQA row twice, and a seeded half of them a third time
    sqa_rows = Counter(int(k) for s, k in ds.index if ds.sources[int(s)].task == "SQA")
    assert sorted(Counter(sqa_rows.values()).items()) == [(2, 5), (3, 5)]
    again = SpeechDataset.from_config(corpus, "train", seed=1)
    assert np.array_equal(ds.index, again.index)


def test_data_subset_is_seeded_and_per_source(corpus):
    a = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=3)
    b = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=3)
    c = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=4)
    assert np.array_equal(a.index, b.index) and not np.array_equal(a.index, c.index)
    assert _by_source(a) == {"MuSTC": 10, "Spoken_SQuAD": 12}  # 5 rows x weight 2.5 (rounded)
    with pytest.raises(ValueError, match="data_subset"):
        SpeechDataset.from_config(corpus, "train", data_subset=1.5)


def test_subset_weights_and_prompts_do_not_depend_on_where_the_data_lives(corpus, tmp_path_factory):
    moved = tmp_path_factory.mktemp("elsewhere") / "corpus"
    shutil.copytree(corpus.parent, moved)
    config = moved / "data.yml"
    config.write_text(corpus.read_text().replace(str(corpus.parent), str(moved)))
    here = SpeechDataset.from_config(corpus, "train", data_subset=0.5, seed=3)
    there = SpeechDataset.from_config(config, "train", data_subset=0.5, seed=3)
    assert here.sources[0].spec.path != there.sources[0].spec.path
    assert here.row_ids() == there.row_ids()  # the same rows, each repeated as often (weight 2.5)
    prompts = [[getattr(ds[i], "prompt", None) for i in range(len(ds))] for ds in (here, there)]
    assert prompts[0] == prompts[1] and len(set(prompts[0]) - {None}) > 1  # seeded per row, not fixed


def test_eval_destination_fixed_prompt_no_weights(corpus):
    ds = SpeechDataset.from_config(corpus, "eval")
    assert len(ds) == 6 and not ds.train
    first = PromptBank.load().instructions("ST", source_language="en", target_language="de")[0]
    assert {ds[i].prompt for i in range(len(ds))} == {f"<audio>\n{first}"}  # the paper's layout
    with pytest.raises(ConfigError, match="no partition has destination 'test'"):
        SpeechDataset.from_config(corpus, "test")


def test_training_prompts_seeded_per_sample_and_epoch(corpus):
    ds = SpeechDataset.from_config(corpus, "train", seed=5, prompt_format="instruction_first")
    mustc = [i for i in range(len(ds)) if ds.task_name(i) == "ST" and i != 7]
    first = [ds[i]["prompt"] for i in mustc]
    assert first == [ds[i]["prompt"] for i in mustc]
    assert len(set(first)) > 1
    ds.set_epoch(1)
    assert [ds[i]["prompt"] for i in mustc] != first
    sqa = next(i for i in range(len(ds)) if ds.task_name(i) == "SQA")
    assert ds[sqa]["prompt"].endswith("?\n<audio>")  # question used as the prompt


def test_decode_failure_returns_none_and_counts(corpus, tiny_tokenizer):
    ds = SpeechDataset.from_config(corpus, "train")
    marker = SkippedRow("MuSTC.ST.en-de:train:7", "non_finite_audio", "MuSTC.ST.en-de:train")
    assert ds.sample_or_skip(7) == marker
    assert ds.sample_or_skip(6).id == ds[6].id == "MuSTC.ST.en-de:train:6"
    assert ds[7] is None
    assert ds.skips.as_dict() == {"non_finite_audio": 1}
    assert "non_finite_audio=1" in ds.summary()
    strict = SpeechDataset.from_config(corpus, "train", strict=True)
    with pytest.raises(DataError, match=r"train\.parquet: row MuSTC.ST.en-de:train:7: non_finite_audio"):
        strict[7]


def test_interleaved_samples_have_segments(corpus):
    ds = SpeechDataset.from_config(corpus, "eval", interleave_options=InterleaveOptions(seed=0))
    s = ds[3]
    kinds = [k for k, _ in s["segments"]]
    assert set(kinds) <= {"text", "audio"} and all(a != b for a, b in zip(kinds, kinds[1:]))
    text_words = " ".join(v for k, v in s["segments"] if k == "text").split()
    assert set(text_words) <= set(s["transcript"].split())
    # sources without word boundaries cannot be interleaved: a clean, counted skip
    ds = SpeechDataset.from_config(corpus, "train", interleave_options=InterleaveOptions())
    assert ds.skips.as_dict()["missing_column"] == 10


def test_empty_dataset_is_an_error(corpus):
    text = corpus.read_text().replace("weight: 2.5, max_duration: 10", "weight: 2.5, max_duration: 0.1")
    text = text.replace(
        'train: {amount: ":100%", destination: train, weight: 1.0}', "train: {destination: eval}"
    )
    corpus.write_text(text)
    with pytest.raises(DataError, match="no usable train samples; skipped 10 of 10 samples: too_long=10"):
        SpeechDataset.from_config(corpus, "train")


def test_dataloader_end_to_end(corpus, tiny_tokenizer):
    add_audio_token(tiny_tokenizer)
    ds = SpeechDataset.from_config(corpus, "train")
    sampler = DurationBatchSampler(ds.durations, max_batch_seconds=4.0, seed=0)
    collator = SpeechCollator(tiny_tokenizer, lambda n: max(1, n // 1600), with_transcript=False)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collator)
    rows, skipped = 0, Counter()
    for batch in loader:
        rows += batch["input_ids"].shape[0]
        skipped.update(batch.pop("skipped"))
        assert batch["audio_values"].shape[0] == batch["input_ids"].shape[0]
    assert rows == len(ds) - 1 and skipped == {"bad_audio": 1}


# ----------------------------------------------------------------------------- public per-item API
def test_row_ids_task_names_and_references(corpus):
    ds = SpeechDataset.from_config(corpus, "eval")
    assert ds.row_ids() == [f"MuSTC.ST.en-de:dev:{k}" for k in range(6)]
    assert ds.row_id(2) == ds[2].id and ds.task_name(2) == "ST"
    assert ds.reference(2) == ["satz 2"] == ds[2].references


def test_decode_failure_counted_once_per_row(corpus):
    ds = SpeechDataset.from_config(corpus, "train")
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert ds[7] is None and ds[7] is None
    assert ds.skips.as_dict() == {"non_finite_audio": 1}


def _asr_rows(n: int, text: str = "hello, world") -> list[dict]:
    return [
        {"audio": encode_audio(_tone(0.3), SR), "transcript": f"{text} {i}", "duration": 0.3}
        for i in range(n)
    ]


def test_same_stem_in_a_glob_gives_unique_row_ids(tmp_path):
    for shard in ("a", "b"):
        write_parquet(_asr_rows(2), tmp_path / "c" / shard / "train.parquet")
    cfg = tmp_path / "d.yml"
    cfg.write_text(
        f"""
DATA:
  - Parquet:
      datapath: {tmp_path / "c"}
      task: ASR
      files: "*/{{partition}}.parquet"
      partitions: {{train: {{destination: test}}}}
"""
    )
    ds = SpeechDataset.from_config(cfg, "test")
    assert ds.row_ids() == [
        "Parquet.ASR.en:a/train:0",
        "Parquet.ASR.en:a/train:1",
        "Parquet.ASR.en:b/train:0",
        "Parquet.ASR.en:b/train:1",
    ]
    # two entries whose files would give the same ids: an error at load naming both
    for root in ("x", "y"):
        write_parquet(_asr_rows(2), tmp_path / root / "train.parquet")
    entry = "  - Parquet:\n      datapath: {}\n      task: ASR\n      partitions: {{train: {{destination: train}}}}\n"
    cfg.write_text("DATA:\n" + entry.format(tmp_path / "x") + entry.format(tmp_path / "y"))
    with pytest.raises(
        DataError, match=r"duplicate row ids Parquet\.ASR\.en:train:\*: d\.yml: DATA\[1\].*DATA\[0\]"
    ):
        SpeechDataset.from_config(cfg, "train")


def test_no_punctuation_strips_transcript_words_and_target(tmp_path):
    wb = [[0.0, 0.1, "Well-known,"], [0.1, 0.2, "--"], [0.2, 0.3, "don't!"]]
    rows = [
        {
            "audio": encode_audio(_tone(0.3), SR),
            "transcription": "Well-known, -- don't!",
            "word_boundaries": json.dumps(wb),
            "duration": 0.3,
        }
    ]
    write_parquet(rows, tmp_path / "en-de_train_processed.parquet")
    cfg = tmp_path / "n.yml"
    cfg.write_text(
        f"DATA:\n  - MuSTC_NWP:\n      datapath: {tmp_path}\n      task: ASR\n      languages: [en-de]\n"
        "      partitions: {train: {destination: train}}\n"
    )
    s = SpeechDataset.from_config(cfg, "train", no_punctuation=True)[0]
    assert s.transcript == "Wellknown  dont" and s.target == "Wellknown  dont"
    assert s.word_boundaries == [[0.0, 0.1, "Wellknown"], [0.2, 0.3, "dont"]]  # "--" left nothing: dropped
    plain = SpeechDataset.from_config(cfg, "train")[0]
    assert plain.target == "Well-known, -- don't!" and len(plain.word_boundaries) == 3


# ----------------------------------------------------------------------------- the original's data configs
_META = (
    "speaking_rate",
    "gender",
    "noise",
    "reverberation",
    "speech_monotony",
    "sdr_noise",
    "pesq_speech_quality",
)


def _original_tree(root: Path) -> None:
    """Tiny parquet files in the original repo's folder layouts (DESIGN.md, "Data")."""

    def utt(i: int, seconds: float = 1.2) -> dict:
        words = [f"w{i}x{j}" for j in range(7)]
        wb = [[j * seconds / 7, (j + 1) * seconds / 7, w] for j, w in enumerate(words)]
        return {
            "audio": encode_audio(_tone(seconds), SR),
            "duration": seconds,
            "words": words,
            "wb": json.dumps(wb),
        }

    mls = []
    for i in range(2):
        u = utt(i)
        row = {"audio": u["audio"], "transcript": " ".join(u["words"]), "duration": u["duration"]}
        row.update({f: f" {f.replace('_', ' ')} {i} " for f in _META})
        mls.append(row)
    for name in ("mls_train_chunk_0", "mls_train_chunk_1", "mls_test"):
        write_parquet(mls, root / "data/mls/parquet_files" / f"{name}.parquet")
    nwp = []
    for i in range(2):
        u = utt(i)
        nwp.append(
            {
                "audio": u["audio"],
                "transcription": " ".join(u["words"]),
                "word_boundaries": u["wb"],
                "source_language": "en",
                "target_language": "de",
                "task": "ASR",
                "duration": u["duration"],
            }
        )
    write_parquet(nwp, root / "data/Giga_NWP/en_train_processed.parquet")
    write_parquet(nwp, root / "data/Giga_NWP/en_train_processed_001.parquet")
    write_parquet(nwp, root / "data/MustC_NWP/en-de_train_processed.parquet")
    for pair in ("en-de", "en-fr", "en-it", "en-es"):
        rows = [
            {"audio": utt(i)["audio"], "sentence": "s", "translation": "t", "duration": 1.2} for i in range(2)
        ]
        write_parquet(rows, root / f"data/MUSTC_v1.0/{pair}/train.parquet")
    write_parquet(
        [{"audio": utt(0)["audio"], "question": "Who?\n<audio>", "answer": "Bo", "duration": 1.2}],
        root / "data/Spoken_SQuAD/spoken_squad_train.parquet",
    )
    write_parquet(
        [{"audio": utt(0)["audio"], "transcript": "g", "duration": 1.2}],
        root / "data/Gigaspeech/parque_files/gigaspeech_train.parquet",
    )


def _original_config(root: Path, name: str, entries: list[tuple[str, str, str, str, str]]) -> Path:
    """A config written the way the original's are: (type, datapath, task, languages, partition block)."""
    text = 'INPUTS_TEXT_LIST: "llava/dataset/INPUTS_TEXT_LIST.json"\n\nDATA:\n'
    for dtype, datapath, task, languages, part in entries:
        text += (
            f"    - {dtype}:\n"
            f'        datapath: "{datapath}"\n'
            f'        task: "{task}"\n'
            f"        languages: {languages}\n"
            f"        partitions:\n{part}"
        )
    (root / name).write_text(text)
    return root / name


def _partition(name: str, destination: str, max_duration: str = "45") -> str:
    return (
        f"            {name}:\n"
        '                amount: ":100%"\n'
        "                min_duration: 1\n"
        f"                max_duration: {max_duration}\n"
        f'                destination: "{destination}"\n'
    )


def test_original_configs_load_unchanged(tmp_path, monkeypatch):
    _original_tree(tmp_path)
    monkeypatch.chdir(tmp_path)  # the original resolves datapaths against the working directory
    meta_target = ", ".join(f"{f.replace('_', ' ')} 0" for f in _META)

    mls = _original_config(
        tmp_path, "mls.yml", [("MLS", "data/mls", "META", '["en"]', _partition("train", "train", "150"))]
    )
    ds = SpeechDataset.from_config(mls, "train")
    assert len(ds) == 4 and ds.row_id(0) == "MLS.META.en:mls_train_chunk_0:0"
    s = ds[0]
    assert (
        s.task == "META" and s.target == meta_target and s.transcript == "w0x0 w0x1 w0x2 w0x3 w0x4 w0x5 w0x6"
    )
    assert s.prompt.startswith("<audio>\n")  # the paper's layout by default

    mls_test = _original_config(
        tmp_path,
        "mls_en_100_percent.yml",
        [("MLS", "data/mls", "META", '["en"]', _partition("test", "test", "null"))],
    )
    test = SpeechDataset.from_config(mls_test, "test")
    assert test.row_ids() == ["MLS.META.en:mls_test:0", "MLS.META.en:mls_test:1"]
    assert test.reference(0) == [meta_target]

    giga_nwp = _original_config(
        tmp_path,
        "giga_nwp.yml",
        [("Giga_NWP", "data/Giga_NWP", "ASR", '["en"]', _partition("train", "train"))],
    )
    mustc_nwp = _original_config(
        tmp_path,
        "mustc_nwp.yml",
        [("MuSTC_NWP", "data/MustC_NWP/", "ASR", '["en-de"]', _partition("train", "train"))],
    )
    for cfg, n in ((giga_nwp, 4), (mustc_nwp, 2)):
        ds = SpeechDataset.from_config(cfg, "train", interleave_options=InterleaveOptions())
        assert len(ds) == n and ds[0].segments and "".join(k[0] for k, _ in ds[0].segments)

    mix_and_meta = _original_config(
        tmp_path,
        "mix_and_meta.yml",
        [
            ("MuSTC", "data/MUSTC_v1.0", "ASR", '["en-de"]', _partition("train", "train")),
            (
                "MuSTC",
                "data/MUSTC_v1.0",
                "ST",
                '["en-de", "en-fr", "en-it", "en-es"]',
                _partition("train", "train"),
            ),
            ("Spoken_SQuAD", "data/Spoken_SQuAD", "SQA", '["en"]', _partition("train", "train", "150")),
            ("MLS", "data/mls", "META", '["en"]', _partition("train", "train", "120")),
            ("Gigaspeech", "data/Gigaspeech", "ASR", '["en"]', _partition("train", "train")),
        ],
    )
    ds = SpeechDataset.from_config(mix_and_meta, "train")
    assert Counter(ds.task_name(i) for i in range(len(ds))) == {"ASR": 3, "ST": 8, "SQA": 1, "META": 4}
    assert all(ds[i] is not None for i in range(len(ds)))


def test_memoized_audio_equals_a_fresh_decode_and_stays_within_its_budget(
    corpus, tiny_tokenizer, monkeypatch
):
    """With `audio_memo_mb`, a row seen again is not decoded again; samples, interleaved segments and
    collated batches equal those of a dataset without the memo; a bad row still fails (and is counted)
    every time; the memo stops at its byte budget; a memoized waveform cannot be changed in place."""
    import llava.dataset.sources as sources_mod

    decodes = []
    real = sources_mod.decode_audio
    monkeypatch.setattr(sources_mod, "decode_audio", lambda *a, **k: decodes.append(1) or real(*a, **k))
    add_audio_token(tiny_tokenizer)
    collator = SpeechCollator(tiny_tokenizer, lambda n: max(1, n // 1600), with_transcript=True)
    plain = SpeechDataset.from_config(corpus, "train", seed=1)
    memo = SpeechDataset.from_config(corpus, "train", seed=1, audio_memo_mb=1.0)
    order = [i for i in range(len(memo)) if i != 7] * 2  # every row twice (two epochs)
    for i in order:
        want, got = plain[i], memo[i]
        assert np.array_equal(got["audio"], want["audio"]) and got["prompt"] == want["prompt"]
    decodes.clear()
    for i in order:
        memo[i]
    assert not decodes  # all decoded waveforms fit 1 MiB: nothing decoded again
    batch, want = collator([memo[i] for i in order[:6]]), collator([plain[i] for i in order[:6]])
    assert all(np.array_equal(batch[k], want[k]) for k in want if k != "meta")
    decodes.clear()
    assert memo[7] is None and memo[7] is None and len(decodes) == 2  # a bad row is never memoized
    assert memo.skips.as_dict() == {"non_finite_audio": 1}
    with pytest.raises(ValueError, match="read-only"):  # a waveform shared by later reads
        memo[0]["audio"][0] = 1.0
    interleaved = [SpeechDataset.from_config(corpus, "eval", interleave_options=InterleaveOptions(seed=0), audio_memo_mb=m) for m in (0, 1)]  # fmt: skip
    for _ in range(2):
        a, b = interleaved[0][3]["segments"], interleaved[1][3]["segments"]
        assert [k for k, _ in a] == [k for k, _ in b]
        assert all(np.array_equal(x, y) if k == "audio" else x == y for (k, x), (_, y) in zip(a, b))
    # A budget smaller than one waveform keeps nothing, and every read decodes again.
    tiny = SpeechDataset.from_config(corpus, "train", seed=1, audio_memo_mb=1e-6)
    decodes.clear()
    tiny[0], tiny[0]
    assert len(decodes) == 2 and not any(src._audio_memo for src in tiny.sources)
