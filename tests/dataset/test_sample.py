from __future__ import annotations

import numpy as np
import pytest

from llava.dataset.sample import Sample, SampleError


def _kw(**over):
    kw = dict(
        id="u1", task="ASR", audio=np.ones(1600, np.float64), prompt="<audio>\nTranscribe.", target="hi"
    )
    kw.update(over)
    return kw


def test_defaults_are_derived():
    s = Sample(**_kw())
    assert s.audio.dtype == np.float32
    assert s.duration == pytest.approx(0.1)
    assert s.references == ["hi"]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"task": "NOPE"}, "task"),
        ({"prompt": "no audio here"}, "prompt"),
        ({"prompt": "<audio> <audio>"}, "prompt"),
        ({"audio": np.zeros((2, 10), np.float32)}, "audio"),
        ({"audio": np.zeros(0, np.float32)}, "audio"),
        ({"id": ""}, "id"),
        ({"duration": float("nan")}, "duration"),
        ({"segments": [("video", 1)]}, "segments"),
        ({"references": "hi"}, "references"),
    ],
)
def test_invalid_fields_are_named(over, field):
    with pytest.raises(SampleError, match=f": {field}"):
        Sample(**_kw(**over))


def test_record_view_and_from_mapping():
    s = Sample.from_mapping(_kw(source_language="en", transcript="hi"))
    assert s.source_lang == "en" and s["transcript"] == "hi" and s.get("nope", 3) == 3
    d = dict(s)
    assert d["id"] == "u1" and "segments" in d
    with pytest.raises(SampleError, match="unknown field 'colour'"):
        Sample.from_mapping(_kw(colour="red"))
    with pytest.raises(SampleError, match="missing field"):
        Sample.from_mapping({"id": "x", "task": "ASR"})
