"""The batching engine: requests that arrive together are generated as one batch.

One worker thread owns the model. It takes the first waiting job, gathers whatever else arrives within
`max_wait_ms` (and whatever queued up while the previous batch ran), up to `max_batch_size` jobs, and
generates each group of jobs with the same decoding settings in one `generate_batch` call. Generation
in `llava.inference.generation` gives every row the tokens it would get alone, so a batched answer is
the sequential one; only the latency changes. `max_batch_size=1` turns batching off.

A batch that fails is retried job by job, so one bad request cannot fail the others with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

from llava.inference.generation import generate_batch, newline_token_ids, stop_token_ids
from llava.serve.requests import GenerationJob

__all__ = ["BatchingEngine", "Completion", "EngineStats"]

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class Completion:
    """The answer to one job."""

    text: str
    prompt_tokens: int  # LLM positions of the prompt, audio included
    completion_tokens: int  # generated tokens before the one that ended the answer
    finish_reason: str  # "stop" or "length"


@dataclass
class EngineStats:
    """Counters for /health and the benchmark."""

    requests: int = 0  # jobs answered (with text or an error)
    batches: int = 0  # generate_batch calls
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # rows per generate call -> count
    failed: int = 0  # jobs answered with an error

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        return data


class _TokenRecorder:
    """The model as `generate_batch` sees it, keeping the new tokens [B, new] of its last `generate`
    call (for exact token counts and finish reasons; everything else is the model's)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.tokens: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.tokens = self._model.generate(*args, **kwargs)
        return self.tokens


class BatchingEngine:
    """Runs `GenerationJob`s on one model from a queue, batching jobs that wait together."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        processor: Any,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size (--max-batch-size) must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms (--max-wait-ms) must be >= 0, got {max_wait_ms}")
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.stats = EngineStats()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> BatchingEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llava-batching", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: GenerationJob) -> Future:
        """Queue `job`; the future resolves to a `Completion` (or the generation error)."""
        if self._thread is None:
            raise RuntimeError("the batching engine is not running (call start())")
        future: Future = Future()
        self._queue.put((job, future))
        return future

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------------------------- worker
    def _gather(self, first: Any) -> tuple[list[tuple[GenerationJob, Future]], bool]:
        items, stopping = [first], False
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stopping = True
                break
            items.append(item)
        return items, stopping

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            items, stopping = self._gather(first)
            live = [(job, fut) for job, fut in items if fut.set_running_or_notify_cancel()]
            groups: dict[tuple, list[tuple[GenerationJob, Future]]] = {}
            for job, fut in live:
                groups.setdefault(tuple(sorted(job.settings.as_dict().items())), []).append((job, fut))
            for group in groups.values():
                self._run_group(group)
            if stopping:
                return

    def _run_group(self, group: list[tuple[GenerationJob, Future]]) -> None:
        try:
            completions = self.generate([job for job, _ in group])
        except Exception as exc:  # noqa: BLE001 - every job must get an answer
            if len(group) > 1:
                logger.warning("a batch of %d failed (%s); retrying its jobs one by one", len(group), exc)
                for item in group:
                    self._run_group([item])
                return
            logger.exception("generation failed")
            with self._lock:
                self.stats.requests += 1
                self.stats.failed += 1
            group[0][1].set_exception(exc)
            return
        with self._lock:
            self.stats.requests += len(group)
        for (_, fut), completion in zip(group, completions):
            fut.set_result(completion)

    def generate(self, jobs: list[GenerationJob]) -> list[Completion]:
        """Generate `jobs` (same settings) as one batch, in the calling thread."""
        waves = [w for job in jobs for w in job.audios]
        batch = dict(self.processor(text=[job.text for job in jobs], audio=waves or None))
        batch["ids"] = [job.row_id for job in jobs]  # seeds each row's sampling stream
        settings = jobs[0].settings
        recorder = _TokenRecorder(self.model)
        texts = generate_batch(recorder, self.tokenizer, batch, settings, self.stop_ids)
        with self._lock:
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
            self.stats.batch_sizes[len(jobs)] = self.stats.batch_sizes.get(len(jobs), 0) + 1
        ends = set(self.stop_ids)
        if settings.stop_at_newline:
            ends.update(newline_token_ids(self.tokenizer))
        out = []
        for job, text, row in zip(jobs, texts, recorder.tokens.tolist()):
            # Tokens up to the one that ended the row; a row that never ended ran out of max_new_tokens.
            n = next((i for i, t in enumerate(row) if t in ends), None)
            reason = "stop" if n is not None else "length"
            for s in job.stop:
                if s in text:
                    text, reason = text.split(s, 1)[0], "stop"
            out.append(Completion(text, job.prompt_tokens, len(row) if n is None else n, reason))
        return out
