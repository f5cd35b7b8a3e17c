"""Server-side dynamic batching, as TF Serving's `--enable_batching`.

Concurrent requests for the same model version and signature (and the same
per-example shapes, so they can be stacked) wait in one queue; a pool of
`num_batch_threads` workers takes a batch when `max_batch_size` examples are
waiting or the oldest has waited `batch_timeout_micros`, pads it up to the
next `allowed_batch_sizes` entry by repeating the first example (as TF
Serving does), calls the model once, and hands each caller its own rows with
the padding removed.  A full queue is UNAVAILABLE, an over-size task is
INVALID_ARGUMENT, and a task whose deadline passes while queued never runs.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Mapping

import numpy as np

from serving.config import BatchingOptions
from serving.errors import Code, ServingError, deadline_exceeded, invalid_argument, unavailable
from serving.metrics import Metrics
from serving.servable import Servable


class _Task:
  __slots__ = ("inputs", "size", "enqueued", "deadline", "done", "result", "error", "state")

  def __init__(self, inputs: Mapping[str, np.ndarray], size: int, deadline: float | None):
    self.inputs = inputs
    self.size = size
    self.enqueued = time.monotonic()
    self.deadline = deadline
    self.done = threading.Event()
    self.result: dict[str, np.ndarray] | None = None
    self.error: ServingError | None = None
    self.state = "queued"          # queued -> running | abandoned


class _Queue:

  def __init__(self, servable: Servable, signature: str):
    self.servable = servable
    self.signature = signature
    self.tasks: collections.deque[_Task] = collections.deque()
    self.size = 0


class Batcher:
  """Callable like `Servable.call`, plus a deadline; shared by all models."""

  def __init__(self, options: BatchingOptions, metrics: Metrics | None = None):
    self.options = options
    self.metrics = metrics
    self._cond = threading.Condition()
    self._queues: dict[tuple, _Queue] = {}
    self._stopping = False
    self._workers = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                     for i in range(options.num_batch_threads)]
    for w in self._workers:
      w.start()

  def __call__(self, servable: Servable, signature: str, inputs: Mapping[str, np.ndarray],
               deadline: float | None = None) -> dict[str, np.ndarray]:
    size = _batch_size(inputs)
    if size == 0:
      return servable.call(signature, inputs)     # nothing to batch with
    opts = self.options
    if size > opts.max_batch_size:
      raise invalid_argument(
          f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}")
    if self.metrics:
      self.metrics.input_batch_size.observe(size, servable.name, signature)
    key = (id(servable), signature,
           tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(inputs.items())))
    task = _Task(inputs, size, deadline)
    with self._cond:
      if self._stopping:
        raise unavailable("The server is shutting down")
      queue = self._queues.get(key)
      if queue is None:
        queue = self._queues[key] = _Queue(servable, signature)
      batches = -(-(queue.size + size) // opts.max_batch_size)
      if batches > opts.max_enqueued_batches:
        raise unavailable("The batch scheduling queue to which this task was submitted is full")
      queue.tasks.append(task)
      queue.size += size
      self._cond.notify()
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not task.done.wait(timeout):
      with self._cond:
        if task.state == "queued":
          task.state = "abandoned"
          raise deadline_exceeded("Deadline exceeded while the request waited for a batch")
      task.done.wait()
    if task.error is not None:
      raise task.error
    assert task.result is not None
    return task.result

  def stop(self) -> None:
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    for w in self._workers:
      w.join(timeout=5)

  # ------------------------------------------------------------ workers

  def _next_batch(self) -> tuple[_Queue, list[_Task]] | None:
    """Under the lock: wait until some queue is ready, take its batch."""
    timeout_s = self.options.batch_timeout_micros / 1e6
    while not self._stopping:
      now = time.monotonic()
      ready, wake = None, None
      for key, queue in list(self._queues.items()):
        self._drop_abandoned(queue)
        if not queue.tasks:
          del self._queues[key]
          continue
        due = queue.tasks[0].enqueued + timeout_s
        if queue.size >= self.options.max_batch_size or due <= now:
          if ready is None or queue.tasks[0].enqueued < ready.tasks[0].enqueued:
            ready = queue
        else:
          wake = due if wake is None else min(wake, due)
      if ready is not None:
        return ready, self._take(ready)
      self._cond.wait(None if wake is None else max(0.0, wake - now))
    return None

  def _drop_abandoned(self, queue: _Queue) -> None:
    if any(t.state == "abandoned" for t in queue.tasks):
      kept = [t for t in queue.tasks if t.state != "abandoned"]
      queue.tasks = collections.deque(kept)
      queue.size = sum(t.size for t in kept)

  def _take(self, queue: _Queue) -> list[_Task]:
    batch, total = [], 0
    while queue.tasks and total + queue.tasks[0].size <= self.options.max_batch_size:
      task = queue.tasks.popleft()
      queue.size -= task.size
      task.state = "running"
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
      for t in tasks:
        t.done.set()

  def _run(self, queue: _Queue, tasks: list[_Task]) -> None:
    total = sum(t.size for t in tasks)
    padded = next((b for b in self.options.allowed_batch_sizes if b >= total), total)
    inputs = {}
    for name in tasks[0].inputs:
      parts = [t.inputs[name] for t in tasks]
      if padded > total:
        first = parts[0][:1]
        parts.append(np.repeat(first, padded - total, axis=0))
      inputs[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    outputs = queue.servable.call(queue.signature, inputs)
    if self.metrics:
      self.metrics.record_batch(model=queue.servable.name, signature=queue.signature,
                                inputs=total, padded=padded)
    for name, value in outputs.items():
      if value.ndim == 0 or value.shape[0] != padded:
        raise invalid_argument(
            f"Batched output tensor '{name}' has 0th dimension "
            f"{value.shape[0] if value.ndim else 'none'} which doesn't match the batch "
            f"size {padded}: this signature cannot be batched")
    offset = 0
    for t in tasks:
      t.result = {k: v[offset:offset + t.size] for k, v in outputs.items()}
      offset += t.size


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
  sizes = set()
  for value in inputs.values():
    if value.ndim == 0:
      raise invalid_argument("Batching session Run() input tensors must have at least one "
                             "dimension")
    sizes.add(value.shape[0])
  if len(sizes) > 1:
    raise invalid_argument("Batching session Run() input tensors must have equal "
                           "0th-dimension size")
  return sizes.pop() if sizes else 0
