"""The batcher: merging, padding, splitting, limits, deadlines, shutdown.

No assertion depends on how fast threads start: a batch either runs only
when full (a timeout no test waits out), or its tasks are queued while the
single batch thread is held busy by a gated call, so what it takes next is
exactly what was queued, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import ServingError
from serving.metrics import Metrics

# A timeout no test waits out: only full batches run on their own.
NEVER_US = 600_000_000


class _FakeServable:
  """Records each Session::Run; every fetch = input * 2 per row.  With a
  `gate`, runs block until it is set (holding the batch thread)."""
  name, version = "fake", 1

  def __init__(self, gate: threading.Event | None = None):
    self.calls: list[int] = []
    self.gate = gate
    self.started = threading.Event()

  def run(self, feeds, fetches):
    self.started.set()
    if self.gate is not None:
      self.gate.wait(60)
    self.calls.append(len(feeds["x"]))
    return {name: feeds["x"] * 2 for name in fetches}


def _bounded(coroutine, timeout: float = 30.0):
  """asyncio.run with a limit: a batcher that never answers fails the test
  with a TimeoutError instead of hanging the run."""
  return asyncio.run(asyncio.wait_for(coroutine, timeout))


def _rows(n: int, width: int = 2) -> list[np.ndarray]:
  return [np.full((1, width), i, np.float32) for i in range(n)]


async def _behind_busy_worker(batcher: Batcher, servable: _FakeServable,
                              feeds: list[dict]) -> tuple[dict, list]:
  """Runs a first call that holds the only batch thread, queues `feeds`,
  then lets it go: (first result, results of `feeds`, errors included)."""
  first = asyncio.ensure_future(batcher.submit(servable, {"x": np.zeros((1, 2), np.float32)},
                                               ["y"]))
  await asyncio.to_thread(servable.started.wait, 60)
  rest = [asyncio.ensure_future(batcher.submit(servable, f, ["y"])) for f in feeds]
  await asyncio.sleep(0.05)          # every task has run up to its enqueue
  servable.gate.set()
  return await first, await asyncio.gather(*rest, return_exceptions=True)


def test_merges_and_pads_what_is_queued():
  metrics = Metrics()
  batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=1000,
                                    num_batch_threads=1, allowed_batch_sizes=(4, 8)), metrics)
  servable = _FakeServable(threading.Event())
  rows = _rows(3)
  _, results = _bounded(_behind_busy_worker(batcher, servable, [{"x": r} for r in rows]))
  for row, result in zip(rows, results):
    np.testing.assert_array_equal(result["y"], row * 2)      # padding removed
  assert servable.calls == [4, 4]        # 1 padded to 4, then the 3 queued padded to 4
  assert metrics.padding_size.summary()[("4",)]["sum"] == 3 + 1
  assert metrics.wrapped_run_count.values()[()] == 2
  assert metrics.input_batch_size.summary()[()]["count"] == 4
  assert metrics.queuing_latency.summary()[("",)]["count"] == 4
  batcher.stop()


def test_pads_string_inputs():
  batcher = Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=1000,
                                    num_batch_threads=1, allowed_batch_sizes=(4,)))
  servable = _FakeServable(threading.Event())
  first = np.array([b"-"], dtype=object)
  rows = [np.array([b"a" * (i + 1)], dtype=object) for i in range(3)]

  async def main():
    servable.gate.set()               # strings: its own queue, no busy worker needed
    return await asyncio.gather(*(batcher.submit(servable, {"x": r}, ["y"])
                                  for r in [first, *rows]))

  results = _bounded(main())
  assert sum(servable.calls) % 4 == 0 and all(c == 4 for c in servable.calls)
  assert [r["y"].tolist() for r in results[1:]] == [[b"aa"], [b"aaaa"], [b"aaaaaa"]]
  batcher.stop()


def test_keeps_fetches_apart_and_enforces_limits():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=NEVER_US,
                                    max_enqueued_batches=1, num_batch_threads=1))
  servable = _FakeServable(threading.Event())

  async def main():
    with pytest.raises(ServingError, match="Task size 3 is larger than maximum input batch "
                                           "size 2"):
      await batcher.submit(servable, {"x": np.ones((3, 2), np.float32)}, ["y"])
    with pytest.raises(ServingError, match="must have at least one dimension"):
      await batcher.submit(servable, {"x": np.float32(1)}, ["y"])
    busy = asyncio.ensure_future(batcher.submit(servable, {"x": np.ones((2, 2), np.float32)},
                                                ["y"]))
    await asyncio.to_thread(servable.started.wait, 60)
    queued = asyncio.ensure_future(batcher.submit(servable, {"x": np.ones((2, 2), np.float32)},
                                                  ["y"]))
    await asyncio.sleep(0.05)
    with pytest.raises(ServingError, match="queue to which this task was submitted is full"):
      await batcher.submit(servable, {"x": np.ones((2, 2), np.float32)}, ["y"])
    other = asyncio.ensure_future(batcher.submit(servable, {"x": np.ones((2, 2), np.float32)},
                                                 ["z"]))       # other fetches: own queue
    servable.gate.set()
    return await asyncio.gather(busy, queued, other)

  results = _bounded(main())
  assert servable.calls == [2, 2, 2] and list(results[2]) == ["z"]
  batcher.stop()


def test_splits_large_requests_with_large_batch_splitting():
  options = BatchingOptions(max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=1,
                            enable_large_batch_splitting=True, max_execution_batch_size=3)
  batcher = Batcher(options)
  servable = _FakeServable()
  x = np.arange(16, dtype=np.float32).reshape(8, 2)
  result = _bounded(batcher.submit(servable, {"x": x}, ["y"]))
  np.testing.assert_array_equal(result["y"], x * 2)
  assert sorted(servable.calls) == [2, 3, 3]
  with pytest.raises(ServingError, match="larger than maximum input batch size 8"):
    _bounded(batcher.submit(servable, {"x": np.zeros((9, 2), np.float32)}, ["y"]))
  batcher.stop()


def test_runs_full_batches_at_once_on_every_thread():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=NEVER_US,
                                    num_batch_threads=2))
  servable = _FakeServable()
  rows = _rows(6)

  async def main():
    return await asyncio.gather(*(batcher.submit(servable, {"x": r}, ["y"]) for r in rows))

  for row, result in zip(rows, _bounded(main())):
    np.testing.assert_array_equal(result["y"], row * 2)
  assert servable.calls == [2, 2, 2]
  batcher.stop()


def test_deadline_frees_its_place_and_stop_fails_the_rest():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=NEVER_US,
                                    num_batch_threads=1))
  servable = _FakeServable()

  async def main():
    with pytest.raises(ServingError, match="Deadline exceeded") as info:
      await batcher.submit(servable, {"x": np.ones((1, 2), np.float32)}, ["y"],
                           time.monotonic() + 0.05)
    assert info.value.http_status == 504
    waiting = asyncio.ensure_future(batcher.submit(servable, {"x": np.ones((1, 2), np.float32)},
                                                   ["y"]))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(batcher.stop)
    with pytest.raises(ServingError, match="shutting down") as info:
      await asyncio.wait_for(waiting, 10)
    assert info.value.code_name == "UNAVAILABLE"

  _bounded(main())
  assert servable.calls == []          # neither the abandoned task nor the stranded one ran
