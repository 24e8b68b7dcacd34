from __future__ import annotations

import pickle

from llava.dataset.skips import BAD_AUDIO, EXCEEDS_MAX_LENGTH, RowSkips, SkipCounter, SkippedRow


def test_skip_counter_counts_by_reason_and_source_and_summarises():
    c = SkipCounter()
    assert c.summary() == "no samples skipped" and not c
    c.seen = 10
    c.add("too_long", 2, "A")
    c.add("too_long", 0, "A")  # nothing to count
    c.update({"empty_text": 1}, "B")
    assert c.total == 3 and c.as_dict() == {"empty_text": 1, "too_long": 2}
    assert c.summary().splitlines() == [
        "skipped 3 of 10 samples: too_long=2, empty_text=1",
        "  A: too_long=2",
        "  B: empty_text=1",
    ]
    other = SkipCounter()
    other.seen = 5
    other.add("too_long", 1, "B")
    c.merge(other)
    assert c.seen == 15 and c.by_source["B"] == {"empty_text": 1, "too_long": 1}


def test_copy_is_independent():
    c = SkipCounter()
    c.seen = 4
    c.add("too_short", 1, "A")
    snapshot = c.copy()
    c.add("non_finite_audio", 1, "A")
    assert snapshot.as_dict() == {"too_short": 1} and snapshot.seen == 4
    assert dict(snapshot.by_source["A"]) == {"too_short": 1}


def test_row_skips_count_each_row_once_across_batches_and_tallies():
    bad, long = SkippedRow("A:3", "non_finite_audio", "A"), SkippedRow("u9", EXCEEDS_MAX_LENGTH)
    worker_1, worker_2 = RowSkips(), RowSkips()
    # the same bad row in two epochs of one worker, and again in another worker
    worker_1.add_batch({"non_finite_audio": 1}, [bad])
    worker_1.add_batch({"non_finite_audio": 1, EXCEEDS_MAX_LENGTH: 1}, [bad, long])
    worker_2.add_batch({"non_finite_audio": 1, BAD_AUDIO: 2}, [bad])  # two items with no id
    # a tally crosses process boundaries (gathered from data-parallel ranks)
    worker_2 = pickle.loads(pickle.dumps(worker_2))
    worker_1.merge(worker_2)
    assert worker_1.total == 4
    assert worker_1.counts() == {"non_finite_audio": 1, EXCEEDS_MAX_LENGTH: 1, BAD_AUDIO: 2}
    load = SkipCounter()
    load.seen = 20
    load.add("too_long", 1, "A")
    summary = worker_1.counter(load)
    assert summary.as_dict() == {BAD_AUDIO: 2, EXCEEDS_MAX_LENGTH: 1, "non_finite_audio": 1, "too_long": 1}
    assert summary.seen == 20 and dict(summary.by_source["A"]) == {"too_long": 1, "non_finite_audio": 1}
    assert load.as_dict() == {"too_long": 1}  # the load-time counter is left as it was
