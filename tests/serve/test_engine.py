"""The batching engine: batched answers equal single ones, settings grouped, failures isolated, counts exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava.inference.generation import GenerationSettings, stop_token_ids
from llava.model.processing import SpeechLlavaProcessor
from llava.serve.engine import BatchingEngine
from llava.serve.requests import GenerationJob

GREEDY = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def parts(tiny_tokenizer):
    from llava.model import apply_training_mode, build_model
    from tests.conftest import TINY_QFORMER, tiny_encoder_config, tiny_llm_config

    torch.manual_seed(0)
    model, tok = build_model(
        tiny_encoder_config("hubert"),
        tiny_llm_config(),
        tokenizer=tiny_tokenizer,
        projector_config=TINY_QFORMER,
        attn_implementation="eager",
    )
    apply_training_mode(model)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.mul_(20.0)
    return model.eval(), tok, SpeechLlavaProcessor.from_model(model, tok)


def _job(tok, i: int, settings: GenerationSettings = GREEDY, row_id: str | None = None) -> GenerationJob:
    rng = np.random.default_rng(i)
    wave = (0.2 * rng.standard_normal(6000 + 2500 * i)).astype(np.float32)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "<audio>\nTranscribe the audio."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return GenerationJob(text, [wave], settings, row_id or f"job{i}")


def test_a_batch_answers_as_its_jobs_alone(parts):
    model, tok, proc = parts
    engine = BatchingEngine(model, tok, proc)
    for settings in (GREEDY, GenerationSettings(max_new_tokens=6, temperature=1.0, top_k=50)):
        jobs = [_job(tok, i, settings) for i in range(5)]
        together = engine.generate(jobs)
        alone = [engine.generate([j])[0] for j in jobs]
        assert together == alone
        assert len({c.text for c in together}) >= 3  # the audio decides, so a row mix-up would show
    # The same seed, the same sample, wherever the row sits.
    sampled = GenerationSettings(max_new_tokens=6, temperature=1.0)
    a = engine.generate([_job(tok, 0, sampled, "seed-1"), _job(tok, 1, sampled, "seed-2")])
    b = engine.generate([_job(tok, 1, sampled, "seed-2")])
    assert a[1] == b[0]


def test_token_counts_finish_reasons_and_stop_strings(parts):
    model, tok, proc = parts
    engine = BatchingEngine(model, tok, proc)
    job = _job(tok, 2, GenerationSettings(max_new_tokens=1))
    (one,) = engine.generate([job])
    recorded = model.generate(
        **{k: v for k, v in proc(text=job.text, audio=job.audios).items()}, max_new_tokens=1
    )
    ends = set(stop_token_ids(tok, model))
    if int(recorded[0, 0]) in ends:
        assert (one.completion_tokens, one.finish_reason) == (0, "stop")
    else:
        assert (one.completion_tokens, one.finish_reason) == (1, "length")
    full = engine.generate([_job(tok, 3)])[0]
    assert full.prompt_tokens == 0  # a job built without a count keeps it
    if len(full.text) > 2:
        cut = _job(tok, 3)
        cut.stop = [full.text[1:3]]
        stopped = engine.generate([cut])[0]
        assert stopped.text == full.text.split(full.text[1:3], 1)[0] and stopped.finish_reason == "stop"


def test_the_queue_batches_by_settings_and_isolates_a_failing_job(parts):
    model, tok, proc = parts
    solo = BatchingEngine(model, tok, proc)
    engine = BatchingEngine(model, tok, proc, max_batch_size=8, max_wait_ms=300).start()
    try:
        # Round 1: three greedy jobs run as one batch, the job with other settings apart.
        jobs = [_job(tok, 0), _job(tok, 1), _job(tok, 2), _job(tok, 3, GenerationSettings(max_new_tokens=3))]
        results = [f.result(timeout=120) for f in [engine.submit(j) for j in jobs]]
        assert results == [solo.generate([j])[0] for j in jobs]
        assert engine.stats.batch_sizes == {3: 1, 1: 1}
        # Round 2: a job that cannot run fails alone; its neighbour is retried and answered.
        bad = _job(tok, 0)
        bad.text = bad.text.replace("<audio>", "<audio> <audio>")  # two placeholders, one waveform
        good, failing = engine.submit(_job(tok, 1)), engine.submit(bad)
        with pytest.raises(ValueError, match="2 <audio> placeholder"):
            failing.result(timeout=120)
        assert good.result(timeout=120) == results[1]
    finally:
        engine.stop()
    assert engine.stats.batch_sizes == {3: 1, 1: 2}
    assert engine.stats.requests == 6 and engine.stats.failed == 1
    assert engine.stats.as_dict()["batch_sizes"] == {"1": 2, "3": 1}
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(jobs[0])
    with pytest.raises(ValueError, match="--max-batch-size"):
        BatchingEngine(model, tok, proc, max_batch_size=0)
