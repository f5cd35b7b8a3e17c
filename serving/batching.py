"""Server-side dynamic batching, as TF Serving's `--enable_batching`
(batching/batching_session.cc): concurrent Session::Run calls with the same
feeds and fetches are merged into one.

Calls on the same servable with the same feed and fetch tensor names (and
the same per-example shapes and dtypes, so they can be stacked) wait in one
queue; a pool of `num_batch_threads` workers takes a batch when
`execution_batch_size` examples are waiting or the oldest has waited
`batch_timeout_micros`, pads it up to the next `allowed_batch_sizes` entry
by repeating the first example (as TF Serving does), runs the session once,
and hands each caller its own rows with the padding removed.  A task larger
than `max_batch_size` is INVALID_ARGUMENT; with `enable_large_batch_splitting`
a task larger than `max_execution_batch_size` is split into pieces that run
in separate batches.  A full queue is UNAVAILABLE, and a task whose deadline
passes while queued never runs.

Callers are coroutines (`submit`): a waiting request holds no thread, and a
batch wakes each event loop once for all of its futures, since a thread per
waiting request cost more in wake-ups than the rest of a batched request
(benchmarks/bench_serving.py measures it).  The per-request path is kept to
a few cheap steps: a worker is woken only when a queue becomes ready or
needs a new timer, a caller that gives up takes its own task out of the
queue, the batch is copied once into a preallocated array, padding
included, and each caller cuts its own rows out of the outputs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Mapping, Sequence

import numpy as np

from contract import warmup as warmup_coverage
from serving.config import BatchingOptions
from serving.errors import Code, ServingError, deadline_exceeded, invalid_argument, unavailable
from serving.metrics import Metrics
from serving.servable import Servable


log = logging.getLogger("serving")


def warn_unwarmed(servable: Servable, options: BatchingOptions | None) -> list[int]:
  """Logs a WARNING when `options` pads batches to sizes the version's
  warmup file does not replay: XLA compiles each of them on the request
  path, in the first batch of that size (contract/warmup.py). Returns them."""
  if options is None:
    return []
  cold = warmup_coverage.missing(options.allowed_batch_sizes, options.execution_batch_size,
                                 warmup_coverage.warmed_batch_sizes(servable.path))
  if cold:
    log.warning("Batching runs version %d of model %s at batch sizes %s that its %s does "
                "not warm up: the first batch of each size compiles on the request path. "
                "Export with --warmup-batch-sizes covering them, or see docs/tuning.md.",
                servable.version, servable.name, warmup_coverage.describe(cold),
                warmup_coverage.FILE)
  return cold


class _Task:
  __slots__ = ("feeds", "size", "enqueued", "future", "outputs", "offset", "error", "queued")

  def __init__(self, feeds: Mapping[str, np.ndarray], size: int, future: asyncio.Future):
    self.feeds = feeds
    self.size = size
    self.enqueued = time.monotonic()
    self.future = future
    self.outputs: dict[str, np.ndarray] = {}     # the whole batch's
    self.offset = 0                               # where this task's rows start
    self.error: ServingError | None = None
    self.queued = True                 # False once a worker took it


class _Queue:

  def __init__(self, servable: Servable, fetches: tuple[str, ...]):
    self.servable = servable
    self.fetches = fetches
    self.tasks: collections.deque[_Task] = collections.deque()
    self.size = 0


class Batcher:
  """Batches `Servable.run` calls; one per distinct BatchingOptions."""

  def __init__(self, options: BatchingOptions, metrics: Metrics | None = None):
    self.options = options
    self.metrics = metrics
    self._limit = options.execution_batch_size
    self._timeout_s = options.batch_timeout_micros / 1e6
    self._cond = threading.Condition()
    self._queues: dict[tuple, _Queue] = {}
    self._stopping = False
    self._workers = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                     for i in range(options.num_batch_threads)]
    for w in self._workers:
      w.start()

  async def submit(self, servable: Servable, feeds: Mapping[str, np.ndarray],
                   fetches: Sequence[str], deadline: float | None = None
                   ) -> dict[str, np.ndarray]:
    """`servable.run(feeds, fetches)`, batched with concurrent calls."""
    size = _batch_size(feeds)
    if size == 0:                       # nothing to batch with
      return await asyncio.get_running_loop().run_in_executor(
          None, servable.run, feeds, fetches)
    if size > self.options.max_batch_size:
      raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                             f"{self.options.max_batch_size}")
    if self.metrics:
      self.metrics.input_batch_size.observe(size)
    fetches = tuple(fetches)
    if size <= self._limit:
      return await self._one(servable, feeds, fetches, size, deadline)
    pieces = [{k: v[start:start + self._limit] for k, v in feeds.items()}
              for start in range(0, size, self._limit)]
    parts = await asyncio.gather(*(
        self._one(servable, piece, fetches, _batch_size(piece), deadline) for piece in pieces))
    return {name: np.concatenate([p[name] for p in parts]) for name in fetches}

  async def _one(self, servable: Servable, feeds: Mapping[str, np.ndarray],
                 fetches: tuple[str, ...], size: int, deadline: float | None
                 ) -> dict[str, np.ndarray]:
    future = asyncio.get_running_loop().create_future()
    queue, task = self._enqueue(servable, feeds, fetches, size, future)
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
      await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
      self._abandon(queue, task)
      await future
    if task.error is not None:
      raise task.error
    end = task.offset + task.size     # this caller's rows, cut here rather than by the batch thread
    return {k: v[task.offset:end] for k, v in task.outputs.items()}

  def _enqueue(self, servable: Servable, feeds: Mapping[str, np.ndarray],
               fetches: tuple[str, ...], size: int, future: asyncio.Future
               ) -> tuple[_Queue, _Task]:
    key = (id(servable), fetches,
           tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items())))
    task = _Task(feeds, size, future)
    with self._cond:
      if self._stopping:
        raise unavailable("The server is shutting down")
      queue = self._queues.get(key)
      if queue is None:
        queue = self._queues[key] = _Queue(servable, fetches)
      batches = -(-(queue.size + size) // self._limit)
      if batches > self.options.max_enqueued_batches:
        raise unavailable("The batch scheduling queue to which this task was submitted is full")
      queue.tasks.append(task)
      queue.size += size
      # An idle worker sleeps until the earliest timer of the queues it saw,
      # so it needs waking only for a new timer (first task of a queue) or a
      # full batch; the other arrivals change nothing it waits for.
      if len(queue.tasks) == 1 or queue.size >= self._limit:
        self._cond.notify()
    return queue, task

  def _abandon(self, queue: _Queue, task: _Task) -> None:
    """A caller whose deadline passed takes its task out of the queue; when a
    batch already took it, it waits for the result instead."""
    with self._cond:
      if task.queued:
        queue.tasks.remove(task)
        queue.size -= task.size
        raise deadline_exceeded("Deadline exceeded while the request waited for a batch")

  def stop(self) -> None:
    """Stops the workers; tasks still queued fail with UNAVAILABLE rather
    than wait for a batch that will never run."""
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    for w in self._workers:
      w.join(timeout=5)
    with self._cond:
      stranded = [t for q in self._queues.values() for t in q.tasks]
      self._queues.clear()
    for t in stranded:
      t.queued = False
      t.error = unavailable("The server is shutting down")
    _finish(stranded)

  # ------------------------------------------------------------ workers

  def _next_batch(self) -> tuple[_Queue, list[_Task]] | None:
    """Under the lock: wait until some queue is ready, take its batch."""
    while not self._stopping:
      now = time.monotonic()
      ready, wake = None, None
      for key, queue in list(self._queues.items()):
        if not queue.tasks:
          del self._queues[key]
          continue
        oldest = queue.tasks[0].enqueued
        due = oldest + self._timeout_s
        if queue.size >= self._limit or due <= now:
          if ready is None or oldest < ready.tasks[0].enqueued:
            ready = queue
        else:
          wake = due if wake is None else min(wake, due)
      if ready is not None:
        batch = self._take(ready)
        if ready.tasks:
          self._cond.notify()      # what is left may be ready for another worker
        return ready, batch
      self._cond.wait(None if wake is None else max(0.0, wake - now))
    return None

  def _take(self, queue: _Queue) -> list[_Task]:
    batch, total = [], 0
    while queue.tasks and total + queue.tasks[0].size <= self._limit:
      task = queue.tasks.popleft()
      queue.size -= task.size
      task.queued = False
      batch.append(task)
      total += task.size
    return batch

  def _work(self) -> None:
    while True:
      with self._cond:
        taken = self._next_batch()
      if taken is None:
        return
      queue, tasks = taken
      try:
        self._run(queue, tasks)
      except ServingError as e:
        for t in tasks:
          t.error = e
      except Exception as e:  # noqa: BLE001  (never lose a worker; report to callers)
        for t in tasks:
          t.error = ServingError(Code.INTERNAL, f"Batch failed: {type(e).__name__}: {e}")
      _finish(tasks)

  def _run(self, queue: _Queue, tasks: list[_Task]) -> None:
    total = sum(t.size for t in tasks)
    padded = next((b for b in self.options.allowed_batch_sizes if b >= total), total)
    if self.metrics:
      now = time.monotonic()
      for t in tasks:
        self.metrics.queuing_latency.observe((now - t.enqueued) * 1e6,
                                             self.options.thread_pool_name)
    if len(tasks) == 1 and padded == total:
      feeds = tasks[0].feeds
    else:
      feeds = {name: _stack([t.feeds[name] for t in tasks], total, padded)
               for name in tasks[0].feeds}
    outputs = queue.servable.run(feeds, queue.fetches)
    if self.metrics:
      self.metrics.record_batch(inputs=total, padded=padded)
    for name, value in outputs.items():
      if value.ndim == 0 or value.shape[0] != padded:
        raise invalid_argument(
            f"Batched output tensor '{name}' has 0th dimension "
            f"{value.shape[0] if value.ndim else 'none'} which doesn't match the batch "
            f"size {padded}: this signature cannot be batched")
    offset = 0
    for t in tasks:
      t.outputs, t.offset = outputs, offset
      offset += t.size


def _finish(tasks: list[_Task]) -> None:
  """Wakes the callers of `tasks` with one call per event loop."""
  by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
  for t in tasks:
    by_loop.setdefault(t.future.get_loop(), []).append(t.future)
  for loop, futures in by_loop.items():
    try:
      loop.call_soon_threadsafe(_settle, futures)
    except RuntimeError:          # the loop is closed: nobody is waiting
      pass


def _settle(futures: list[asyncio.Future]) -> None:
  for f in futures:
    if not f.done():
      f.set_result(None)


def _stack(parts: list[np.ndarray], total: int, padded: int) -> np.ndarray:
  """The parts one after another in a new [padded, ...] array, the rows past
  `total` filled with copies of the first row: two numpy calls, no Python
  loop, since every waiting request waits on the batch thread."""
  first = parts[0]
  out = np.empty((padded, *first.shape[1:]), first.dtype)
  np.concatenate(parts, out=out[:total])
  out[total:] = first[:1]
  return out


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int:
  """batching/batching_util.cc: every input needs the same 0th dimension."""
  sizes = set()
  for value in feeds.values():
    if value.ndim == 0:
      raise invalid_argument("Batching session Run() input tensors must have at least one "
                             "dimension")
    sizes.add(value.shape[0])
  if len(sizes) > 1:
    raise invalid_argument("Batching session Run() input tensors must have equal "
                           "0th-dimension size")
  return sizes.pop() if sizes else 0
