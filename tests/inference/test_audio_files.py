"""Audio inputs: directories, lists and files listed once each; unreadable files become Unreadable."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from llava.dataset.prompts import Prompter
from llava.dataset.tasks import get_task
from llava.inference.audio_files import AudioFiles, list_audio_inputs
from llava.inference.runner import Unreadable


def _wav(path, seconds=0.5, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32), sr)
    return path


def test_directories_lists_and_files(tmp_path):
    d = tmp_path / "clips"
    _wav(d / "b.wav")
    _wav(d / "sub" / "a.flac")
    _wav(d / ".hidden" / "c.wav")
    (d / "notes.txt").write_text("not audio")
    (d / "README").write_text("")
    single = _wav(tmp_path / "x.WAV")
    listed = _wav(tmp_path / "other" / "y.wav")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# clips\nother/y.wav\n\n{tmp_path / 'gone.wav'}\n")
    listing = list_audio_inputs([str(d), str(single), str(lst)])
    assert [i.id for i in listing.items] == [
        f"{d}/b.wav",
        f"{d}/sub/a.flac",
        str(single),
        "other/y.wav",
        str(tmp_path / "gone.wav"),  # kept: it fails when read, counted
    ]
    assert listing.items[3].path == tmp_path / "other" / "y.wav" == listed
    assert dict(listing.not_audio) == {".txt": 1, "": 1}
    assert "5 audio files" in listing.summary() and ".txt x1" in listing.summary()


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(ValueError, match=r"--audios .*empty: no audio files \(0 audio files; 1 other files"):
        list_audio_inputs([empty])
    clip = _wav(tmp_path / "a.wav")
    listing = list_audio_inputs([empty, clip])  # reported, the rest processed
    assert listing.empty_inputs == [str(empty)] and len(listing.items) == 1
    with pytest.raises(ValueError, match="named twice"):
        list_audio_inputs([clip, tmp_path])
    with pytest.raises(ValueError, match="--audios .*nowhere: no such directory or file"):
        list_audio_inputs([tmp_path / "nowhere"])


def test_audio_files_build_samples_and_report_unreadable_ones(tmp_path):
    good = _wav(tmp_path / "good.wav", sr=8000)  # resampled to 16 kHz
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # would block a reader: rejected, not read
    items = list_audio_inputs([good, bad, fifo, tmp_path / "missing.wav"]).items
    task = get_task("ST")
    files = AudioFiles(items, task, Prompter(), sampling_rate=16000, source_lang="en", target_lang="de")
    sample = files[0]
    assert sample.id == str(good) and sample.task == "ST" and sample.audio.shape == (8000,)
    assert sample.prompt == "<audio>\nTranslate the audio into German." and sample.target_lang == "de"
    for i in (1, 2, 3):
        assert isinstance(files[i], Unreadable) and files[i].reason == "undecodable_audio"
    assert "not a regular file" in files[2].error and "not found" in files[3].error
    assert files.size_hint()[3] == 0.0 and files.size_hint()[0] > 0
    random = AudioFiles(
        items, task, Prompter(prompt_format="instruction_first"), sampling_rate=16000, target_lang="de"
    )
    assert random.prompt(0) == random.prompt(0)  # seeded by the file's id
