"""Splitting large inputs into requests of a bounded size.

One request per image wastes round trips; one request for ten thousand
images exceeds message limits and server batch sizes. Inputs are cut into
consecutive slices, sent in order, and the results concatenated in input
order, with a progress bar when a long run is watched from a terminal.

The server's largest batch is not part of TF Serving's API, but its batching
layer names it when a request is too large ("Task size 16 is larger than
maximum input batch size 8"): the rest of the input is then sent in slices
of that size, and the client remembers it for later calls.
"""

from __future__ import annotations

import sys
from typing import Any, Awaitable, Callable

from clients.errors import ClientError
from clients.results import Prediction, merge

# The largest batch the CPU batching config of deploy/config/ accepts
# (max_batch_size 8), so the defaults work against the shipped configs.
DEFAULT_BATCH_SIZE = 8


def slices(n: int, batch_size: int) -> list[slice]:
  """Consecutive slices of at most batch_size covering range(n)."""
  check_batch_size(batch_size)
  return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def check_batch_size(batch_size: int) -> None:
  """Raises ValueError unless batch_size is a positive count of rows."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class Plan:
  """The slices still to send, shrinking when the server names a smaller limit."""

  def __init__(self, n: int, batch_size: int, *, progress: bool | None, desc: str):
    check_batch_size(batch_size)
    if n == 0:
      raise ValueError("nothing to predict: the batch is empty")
    self.n = n
    self.batch_size = batch_size
    self.start = 0
    self.results: list[Prediction] = []
    if progress is None:
      progress = n > batch_size and sys.stderr.isatty()
    self._bar: Any = None
    if progress:
      from tqdm import tqdm  # only long, watched runs pay for it
      self._bar = tqdm(total=n, desc=desc, unit="img", file=sys.stderr)

  def next(self) -> slice | None:
    """The next slice to send, or None when all rows are answered."""
    if self.start >= self.n:
      return None
    return slice(self.start, min(self.start + self.batch_size, self.n))

  def answered(self, rows: slice, result: Prediction) -> None:
    self.results.append(result)
    self.start = rows.stop
    if self._bar is not None:
      self._bar.update(rows.stop - rows.start)

  def rejected(self, rows: slice, error: ClientError) -> None:
    """Shrinks the batch if the server said it is too large; else re-raises."""
    limit = error.batch_limit()
    if limit is None or not 1 <= limit < rows.stop - rows.start:
      raise error
    self.batch_size = limit

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def run_batched(call: Callable[[slice], Prediction], plan: Plan) -> Prediction:
  """`call(rows)` for each slice of the plan; the merged Prediction, in order."""
  try:
    while (rows := plan.next()) is not None:
      try:
        plan.answered(rows, call(rows))
      except ClientError as e:
        plan.rejected(rows, e)
  finally:
    plan.close()
  return merge(plan.results)


async def arun_batched(call: Callable[[slice], Awaitable[Prediction]],
                       plan: Plan) -> Prediction:
  """run_batched for coroutines."""
  try:
    while (rows := plan.next()) is not None:
      try:
        plan.answered(rows, await call(rows))
      except ClientError as e:
        plan.rejected(rows, e)
  finally:
    plan.close()
  return merge(plan.results)
