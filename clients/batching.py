"""Splitting large inputs into requests of a bounded size.

One request per image wastes round trips; one request for ten thousand
images exceeds message limits and server batch sizes. Inputs are cut into
consecutive slices, sent in order, and the results concatenated in input
order, with a progress bar when a long run is watched from a terminal.
"""

from __future__ import annotations

import sys
from typing import Callable

from clients.results import Prediction, merge


def slices(n: int, batch_size: int) -> list[slice]:
  """Consecutive slices of at most batch_size covering range(n)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def run_batched(call: Callable[[slice], Prediction], n: int, batch_size: int, *,
                progress: bool | None = None, desc: str = "predict") -> Prediction:
  """`call(rows)` for each slice of range(n); the merged Prediction, in order.

  `progress=None` shows a tqdm bar (on stderr) only when there is more than one
  request and stderr is a terminal.
  """
  parts = slices(n, batch_size)
  if not parts:
    raise ValueError("nothing to predict: the batch is empty")
  if progress is None:
    progress = len(parts) > 1 and sys.stderr.isatty()
  bar = None
  if progress:
    from tqdm import tqdm  # only long, watched runs pay for it
    bar = tqdm(total=n, desc=desc, unit="img", file=sys.stderr)
  results = []
  try:
    for rows in parts:
      results.append(call(rows))
      if bar is not None:
        bar.update(rows.stop - rows.start)
  finally:
    if bar is not None:
      bar.close()
  return merge(results)
