from __future__ import annotations

from llava.dataset.formats import DATASET_TYPES, FIELDS, TASKS
from llava.dataset.tasks import META_ATTRIBUTES


def test_registry_is_explicit():
    assert set(DATASET_TYPES) == {
        "MuSTC",
        "MuSTC_NWP",
        "Gigaspeech",
        "Giga_NWP",
        "MLS",
        "Spoken_SQuAD",
        "Parquet",
    }


def test_every_type_serves_registered_tasks_and_maps_known_fields():
    for dtype in DATASET_TYPES.values():
        assert set(dtype.tasks) <= set(TASKS)
        assert set(dtype.columns) <= set(FIELDS)
    assert DATASET_TYPES["MLS"].tasks[0] == "META"  # the original's MLS data is the speaker description
    assert {f: DATASET_TYPES["MLS"].columns[f] for f in META_ATTRIBUTES} == {f: f for f in META_ATTRIBUTES}
    assert not DATASET_TYPES["Giga_NWP"].needs_pair  # the original's giga_nwp.yml names one language
