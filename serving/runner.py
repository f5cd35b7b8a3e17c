"""Where a servable's Session::Run executes: on the runner's thread pool, or
through the batcher that applies to the servable (TF Serving wraps a
version's session in a batching session when it loads it:
bundle_factory_util.cc).

Requests and warmup replays alike get their `run` here, so a warmup record
takes the path a request to the same version would.  Model calls are
blocking, so they run on the pool; a batched call waits for its batch on the
caller's event loop (Batcher.submit), holding no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np

from serving import inference
from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import deadline_exceeded
from serving.metrics import Metrics
from serving.servable import Servable


class Runner:
  """The blocking pool and the batchers, one per distinct BatchingOptions."""

  def __init__(self, metrics: Metrics, *, batching: BatchingOptions | None = None,
               per_model_batching: bool = False, threads: int = 0):
    """`batching`: --enable_batching's parameters (None: off); with
    `per_model_batching` (--enable_per_model_batching_parameters) a version
    is batched only with the batching_params.pbtxt it was loaded with.
    `threads`: the pool for blocking calls (0: 4 x cores, at least 8)."""
    self.metrics = metrics
    self._batching = batching
    self._per_model = per_model_batching
    self._batchers: dict[BatchingOptions, Batcher] = {}
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(
        threads or max(8, 4 * len(os.sched_getaffinity(0))), "runner")

  def batching_for(self, servable: Servable) -> BatchingOptions | None:
    """The batching that applies to `servable` (bundle_factory_util.cc
    GetPerModelBatchingParams); None: its requests run unbatched."""
    return servable.batching if self._per_model else self._batching

  def run_for(self, servable: Servable, deadline: float | None) -> inference.Run:
    """Session::Run for `servable`: through its batcher when batching
    applies to it, else on the pool; DEADLINE_EXCEEDED once `deadline`
    (time.monotonic) passed."""
    options = self.batching_for(servable)
    if options is None:
      async def run(feeds: Mapping[str, np.ndarray], fetches: Sequence[str]
                    ) -> dict[str, np.ndarray]:
        if deadline is not None and time.monotonic() >= deadline:
          raise deadline_exceeded()
        return await self.blocking(servable.run, feeds, fetches)
      return run
    batcher = self._batchers.get(options)
    if batcher is None:
      with self._lock:
        batcher = self._batchers.get(options)
        if batcher is None:
          batcher = self._batchers[options] = Batcher(options, self.metrics)
    return functools.partial(batcher.submit, servable, deadline=deadline)

  def blocking(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """`fn(*args)` on the pool, awaited on the caller's loop."""
    return asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

  def stop(self) -> None:
    """Fails queued batched requests (UNAVAILABLE) and ends the pool."""
    with self._lock:
      batchers = list(self._batchers.values())
    for batcher in batchers:
      batcher.stop()
    self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Runner"]
