"""Batcher.submit, the asyncio entry the gRPC front end uses: it must batch,
split, time out and shut down exactly as the blocking call does."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import ServingError
from tests.serving.test_units import _FakeServable


def test_submit_merges_pads_and_splits():
  batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000,
                                    num_batch_threads=1, allowed_batch_sizes=(4, 8)))
  servable = _FakeServable()
  rows = [np.full((1, 2), i, np.float32) for i in range(3)]

  async def main():
    return await asyncio.gather(*(batcher.submit(servable, "sig", {"x": r}) for r in rows))

  results = asyncio.run(main())
  for row, result in zip(rows, results):
    np.testing.assert_array_equal(result["y"], row * 2)
  assert servable.calls == [4]
  batcher.stop()


def test_submit_deadline_frees_its_place_and_stop_fails_the_rest():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=600_000_000,
                                    num_batch_threads=1))
  servable = _FakeServable()

  async def main():
    with pytest.raises(ServingError, match="Deadline exceeded"):
      await batcher.submit(servable, "s", {"x": np.ones((1, 2), np.float32)},
                           time.monotonic() + 0.05)
    waiting = asyncio.ensure_future(batcher.submit(servable, "s", {"x": np.ones((1, 2),
                                                                                np.float32)}))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(batcher.stop)
    with pytest.raises(ServingError, match="shutting down"):
      await asyncio.wait_for(waiting, 10)

  asyncio.run(main())
  assert servable.calls == []          # neither the abandoned task nor the stranded one ran
