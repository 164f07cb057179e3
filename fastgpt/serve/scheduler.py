"""Batching scheduler: concurrent HTTP requests share the engine's batched decode.

One worker thread owns the model. Requests wait in a bounded FIFO queue (full -> the server answers
429); whenever the engine is free the worker takes the oldest request plus every waiting request that
can share a decode with it, and runs them as one batch (static batching: requests that arrive during
a batch wait for the next one).

Requests share a batch when the engine would treat them alike: same temperature / top-k / top-p, same
stop tokens and tool handling, and no ``seed`` (a seeded request runs alone, so the same seed always gives
the same text whatever else the server is doing). They must also fit together: the engine's context
budget is set by the longest prompt in the batch, so a request only joins when that does not shorten
the reply it is owed. Each request keeps its own ``max_tokens``: the batch decodes to the largest, and
a row that reaches its own limit (or a stop string, or whose client went away) is cut from what the
client sees; the batch stops as soon as every row is done.

The worker talks to the asyncio side only through ``loop.call_soon_threadsafe``: after every decode
step each request gets one :class:`Step` event with its new tokens and finished rows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchKey", "GenerationJob", "QueueFull", "Scheduler", "Step"]

log = logging.getLogger("fastgpt.serve")


class QueueFull(Exception):
    """The waiting queue holds ``max_queue`` requests already."""


@dataclass(frozen=True)
class BatchKey:
    """Everything the engine applies to a whole batch; requests batch together only when equal."""

    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop_ids: frozenset[int]
    tools: frozenset[str]  # the tools the engine runs itself (fastgpt.tools names)


@dataclass
class Step:
    """New tokens ``[(row, token)]`` and finished rows ``[(row, finish_reason)]`` of one decode step."""

    tokens: list[tuple[int, int]]
    finished: list[tuple[int, str]]


@dataclass
class Failed:
    message: str


class Done:
    """The job's batch is over; no more events follow."""


@dataclass
class GenerationJob:
    """One request: ``prompts`` (token ids) x ``n`` samples each = ``rows``; row ``r`` samples prompt
    ``r // n``. Events arrive on ``events`` (an asyncio queue of the loop that created the job)."""

    prompts: list[list[int]]
    n: int
    max_tokens: int
    key: BatchKey
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the client went away
    cut: list[bool] = field(default_factory=list)  # rows the consumer ended (stop string)

    def __post_init__(self) -> None:
        self.cut = [False] * self.rows

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    def emit(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled = True


def decode_steps(
    engine: Any, prompts: list[list[int]], *, n: int, max_tokens: int, key: BatchKey
) -> Iterator[tuple[list[int | None], list[str | None]]]:
    """The engine's batched streaming decode: per step, each row's new token and finish reason."""
    return engine.stream_batch(
        prompts,
        max_tokens=max_tokens,
        temperature=key.temperature,
        top_k=key.top_k,
        top_p=key.top_p,
        seed=key.seed,
        n=n,
        stop_ids=set(key.stop_ids),
        tools=key.tools,
    )


class Scheduler:
    """See the module docstring. ``max_batch_rows`` bounds the rows (prompts x n) decoded together."""

    def __init__(self, engine: Any, *, max_batch_rows: int = 8, max_queue: int = 64):
        if max_batch_rows < 1 or max_queue < 1:
            raise ValueError("max_batch_rows and max_queue must be >= 1")
        self.engine = engine
        self.max_batch_rows, self.max_queue = max_batch_rows, max_queue
        self.context_len = int(engine.context_len)
        self._waiting: deque[GenerationJob] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.busy = False
        self.running: list[GenerationJob] = []  # the batch being decoded
        self.stats = {
            "batches": 0,
            "requests": 0,
            "rows": 0,
            "largest_batch_rows": 0,
            "tokens": 0,  # tokens sent to clients
            "rejected": 0,
        }

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="fastgpt-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cv:
            for job in self._waiting:
                job.emit(Failed("the server is shutting down"))
            self._waiting.clear()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, job: GenerationJob) -> None:
        """Queue ``job``; :class:`QueueFull` if ``max_queue`` jobs are waiting already."""
        if job.rows > self.max_batch_rows:
            raise ValueError(f"a job of {job.rows} rows exceeds max_batch_rows={self.max_batch_rows}")
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._waiting)} requests are waiting (limit {self.max_queue})")
            self._waiting.append(job)
            self._cv.notify()

    # ---------------------------------------------------------------------------------- worker
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                batch = self._take_batch()
                self.busy, self.running = bool(batch), batch
            if batch:
                try:
                    self._run_batch(batch)
                finally:
                    self.busy, self.running = False, []

    def _room(self, job: GenerationJob) -> int:
        """Tokens ``job`` is owed: its max_tokens, capped by the room its longest prompt leaves."""
        return min(job.max_tokens, self.context_len - max(len(p) for p in job.prompts))

    def _take_batch(self) -> list[GenerationJob]:
        """The oldest live job plus the waiting jobs that can share its decode (called under the lock)."""
        while self._waiting and self._waiting[0].cancelled:
            self._waiting.popleft().emit(Done())
        if not self._waiting:
            return []
        first = self._waiting.popleft()
        batch, rows = [first], first.rows
        longest, owed = max(len(p) for p in first.prompts), self._room(first)
        if first.key.seed is None:
            for job in list(self._waiting):
                if job.cancelled or job.key != first.key or rows + job.rows > self.max_batch_rows:
                    continue
                new_longest, new_owed = (
                    max(longest, *(len(p) for p in job.prompts)),
                    max(owed, self._room(job)),
                )
                if new_longest + new_owed > self.context_len:
                    continue  # the batch's context budget would cut someone's reply short
                self._waiting.remove(job)
                batch.append(job)
                rows, longest, owed = rows + job.rows, new_longest, new_owed
        return batch

    def _run_batch(self, batch: list[GenerationJob]) -> None:
        # row r of the batch is (job, job_row), prompt-major as the engine orders rows; when every job
        # asks for the same n the engine prefills each prompt once for its n samples, otherwise every
        # row is passed as its own prompt
        owners = [(job, r) for job in batch for r in range(job.rows)]
        if len({job.n for job in batch}) == 1:
            prompts, n = [p for job in batch for p in job.prompts], batch[0].n
        else:
            prompts, n = [job.prompts[r // job.n] for job, r in owners], 1
        max_tokens = max(self._room(job) for job in batch)
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["rows"] += len(owners)
        self.stats["largest_batch_rows"] = max(self.stats["largest_batch_rows"], len(owners))
        produced = [0] * len(owners)  # tokens sent per row
        done = [False] * len(owners)
        try:
            steps = decode_steps(self.engine, prompts, n=n, max_tokens=max_tokens, key=batch[0].key)
            try:
                for new, reasons in steps:
                    self.stats["tokens"] += self._dispatch(batch, owners, new, reasons, produced, done)
                    if all(done):
                        break
            finally:
                steps.close()
            for r, (job, jr) in enumerate(owners):  # rows still open when the engine ran out of budget
                if not done[r] and not job.cancelled:
                    job.emit(Step([], [(jr, "length")]))
        except Exception as e:  # a bug or an out-of-memory: fail these requests, keep serving others
            log.exception("generation failed")
            for job in batch:
                job.emit(Failed(f"generation failed: {type(e).__name__}: {e}"))
        for job in batch:
            job.emit(Done())

    @staticmethod
    def _dispatch(batch, owners, new, reasons, produced: list[int], done: list[bool]) -> int:
        """Send one decode step's tokens and finishes to their jobs (one :class:`Step` per job);
        returns how many tokens were sent."""
        events = {id(job): Step([], []) for job in batch}
        sent = 0
        for r, token in enumerate(new):
            job, jr = owners[r]
            if done[r]:
                continue
            if job.cancelled or job.cut[jr]:  # the client left, or a stop string ended the row
                done[r] = True
                continue
            event = events[id(job)]
            if token is None:  # the engine finished this row at an earlier step
                done[r] = True
                event.finished.append((jr, reasons[r] or "length"))
                continue
            produced[r] += 1
            sent += 1
            event.tokens.append((jr, token))
            reason = reasons[r]
            if reason is None and produced[r] >= job.max_tokens:
                reason = "length"  # the batch decodes to its longest request; this one asked for fewer
            if reason is not None:
                done[r] = True
                event.finished.append((jr, reason))
        for job in batch:
            event = events[id(job)]
            if event.tokens or event.finished:
                job.emit(event)
        return sent
