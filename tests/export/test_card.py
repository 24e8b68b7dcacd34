"""The export's model card: the scores table and which base models count as Hub ids."""

from __future__ import annotations

from llava.export.card import _hub_id, _scores_table


def test_scores_table_lists_the_metrics_present():
    table = _scores_table(
        {
            "tst_st": {"task": "ST", "bleu": 21.456, "chrf": 50.0, "num_predictions": 10},
            "tst_asr": {"task": "ASR", "wer_paper": 9.0, "wer_corpus": 8.5, "num_predictions": 12},
        }
    )
    lines = table.splitlines()
    assert lines[0] == "| test set | task | wer_paper | wer_corpus | bleu | chrf | utterances |"
    assert lines[2] == "| tst_asr | ASR | 9.00 | 8.50 |  |  | 12 |"
    assert lines[3] == "| tst_st | ST |  |  | 21.46 | 50.00 | 10 |"
    assert "mean of per-utterance WERs" in table
    assert "No evaluation scores" in _scores_table({})


def test_hub_ids_are_told_from_local_paths(tmp_path):
    assert _hub_id("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert _hub_id(str(tmp_path)) is None
    assert _hub_id("./models/llm") is None and _hub_id("a/b/c") is None and _hub_id(None) is None
