"""What the tuner tries, in which order, and how it picks: successive halving
over batching configurations, with a refinement step around the leader.

Every configuration is first measured briefly (the "short" rung): the coarse
set spans the dimensions that matter most (batching off, the largest batch,
the timeout), then the neighbours of the best one found so far are tried,
one dimension changed at a time. The best few of the short rung, plus the
shipped configuration, are measured again for longer (the "long" rung) and
the choice is made from those figures only. A brute-force grid of the same
dimensions is 100+ server starts; this is 10 to 20.

The score of a configuration is its goodput summed over the concurrency
levels: at each level, the throughput if its p99 latency meets the target
and no request failed, else 0. A configuration is chosen only if it is at
least the shipped one (within `TOLERANCE`, the run-to-run noise) at every
level measured, so the tuner's answer can never be worse than what ships:
when nothing beats it, the shipped configuration is the answer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

from google.protobuf import text_format

from contract import protos

TOLERANCE = 0.95        # a level counts as "not worse" at >= 95% of the shipped goodput
TIMEOUTS_US = (0, 500, 1000, 2000, 5000, 10000, 20000)
THREADS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One batching configuration; `max_batch_size == 0` is batching off."""
  max_batch_size: int
  batch_timeout_micros: int = 0
  num_batch_threads: int = 1
  max_enqueued_batches: int = 0
  allowed_batch_sizes: tuple[int, ...] = ()
  source: str = "search"      # "search", "shipped" (not part of the identity)

  @property
  def off(self) -> bool:
    return self.max_batch_size == 0

  @property
  def key(self) -> tuple:
    """Identity: what decides how requests are batched. The queue bound only
    decides when requests are refused, so a candidate differing from another
    in it alone is not measured again."""
    return (self.max_batch_size, self.batch_timeout_micros, self.num_batch_threads,
            self.allowed_batch_sizes)

  @property
  def name(self) -> str:
    if self.off:
      return "batching off"
    return (f"max {self.max_batch_size}, timeout {self.batch_timeout_micros} us, "
            f"{self.num_batch_threads} thread{'s' * (self.num_batch_threads != 1)}"
            + (" (shipped)" if self.source == "shipped" else ""))

  def text_proto(self) -> str:
    """The BatchingParameters text proto (TF Serving's field names)."""
    lines = [f"allowed_batch_sizes: {b}" for b in self.allowed_batch_sizes]
    lines += [f"max_batch_size {{ value: {self.max_batch_size} }}",
              f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}",
              f"num_batch_threads {{ value: {self.num_batch_threads} }}",
              f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}",
              "pad_variable_length_inputs: false"]
    return "\n".join(lines) + "\n"

  def as_dict(self) -> dict:
    return {"name": self.name, "batching": not self.off, "source": self.source,
            **({} if self.off else {
                "allowed_batch_sizes": list(self.allowed_batch_sizes),
                "max_batch_size": self.max_batch_size,
                "batch_timeout_micros": self.batch_timeout_micros,
                "num_batch_threads": self.num_batch_threads,
                "max_enqueued_batches": self.max_enqueued_batches})}


OFF = Candidate(0)


def make(max_batch_size: int, timeout_us: int, threads: int, max_concurrency: int,
         source: str = "search") -> Candidate:
  """A candidate with power-of-two allowed sizes up to `max_batch_size` (one
  compiled shape each, all warmable) and a queue bound that holds every
  waiting request of `max_concurrency` closed-loop clients twice over, so
  the queue only fails requests under real overload."""
  sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < max_batch_size)
  queue = max(threads * 2, 2 * -(-max_concurrency // max_batch_size))
  return Candidate(max_batch_size, timeout_us, threads, queue, (*sizes, max_batch_size), source)


def read_batching_file(path: str | Path, source: str = "shipped") -> Candidate:
  """A BatchingParameters text proto as a candidate; ValueError when unreadable."""
  try:
    params = text_format.Parse(Path(path).read_text(), protos.message_class(
        "tensorflow.serving.BatchingParameters")())
  except (OSError, text_format.ParseError) as e:
    raise ValueError(f"cannot read batching parameters {path}: {e}") from None
  return Candidate(params.max_batch_size.value or 1000, params.batch_timeout_micros.value,
                   params.num_batch_threads.value or 1,
                   params.max_enqueued_batches.value or 10,
                   tuple(params.allowed_batch_sizes), source)


# (max_batch_size, batch_timeout_micros) of the coarse set, most informative
# first: the extremes of batch size, then the middle, each without a timeout
# and with a short one.
COARSE = ((32, 2000), (8, 0), (16, 2000), (32, 0), (16, 0), (8, 2000), (4, 0), (4, 2000))


def coarse(max_concurrency: int, shipped: Candidate | None) -> list[Candidate]:
  """The first rung in the order it is measured: the shipped configuration,
  no batching, then COARSE (batch sizes up to the largest concurrency)."""
  limit = max(max_concurrency, 2)
  found = [c for c in (shipped, OFF) if c is not None]
  found += [make(size, timeout, 2, max_concurrency) for size, timeout in COARSE
            if size <= limit] or [make(2, 0, 2, max_concurrency)]
  return unique(found)


def neighbours(best: Candidate, max_concurrency: int) -> list[Candidate]:
  """One dimension changed at a time: batch size halved or doubled, timeout
  one step either way, thread count one step either way."""
  if best.off:
    return [make(2, 0, 1, max_concurrency), make(4, 0, 2, max_concurrency)]
  m, t, n = best.max_batch_size, best.batch_timeout_micros, best.num_batch_threads
  step = _index(TIMEOUTS_US, t)
  found = [make(max(2, m // 2), t, n, max_concurrency),
           make(min(2 * m, 128), t, n, max_concurrency)]
  found += [make(m, TIMEOUTS_US[i], n, max_concurrency)
            for i in (step - 1, step + 1) if 0 <= i < len(TIMEOUTS_US)]
  thread = _index(THREADS, n)
  found += [make(m, t, THREADS[i], max_concurrency)
            for i in (thread - 1, thread + 1) if 0 <= i < len(THREADS)]
  return unique(found)


def _index(values: Sequence[int], value: int) -> int:
  """The position of the entry of `values` closest to `value`."""
  return min(range(len(values)), key=lambda i: abs(values[i] - value))


def unique(candidates: Iterable[Candidate]) -> list[Candidate]:
  seen, out = set(), []
  for c in candidates:
    if c.key not in seen:
      seen.add(c.key)
      out.append(c)
  return out


def goodput(levels: Sequence[dict], p99_ms: float) -> dict[int, float]:
  """concurrency -> throughput where p99 meets the target without errors, else 0."""
  return {lv["concurrency"]: (lv["throughput"] if lv["p99_ms"] <= p99_ms
                              and not sum(lv["errors"].values()) else 0.0)
          for lv in levels}


def score(levels: Sequence[dict], p99_ms: float) -> float:
  return sum(goodput(levels, p99_ms).values())


def not_worse(levels: Sequence[dict], reference: Sequence[dict], p99_ms: float) -> bool:
  """At every level `reference` meets the target, `levels` has at least
  TOLERANCE of its goodput."""
  mine, theirs = goodput(levels, p99_ms), goodput(reference, p99_ms)
  return all(mine.get(c, 0.0) >= TOLERANCE * g for c, g in theirs.items())


def choose(results: Sequence[tuple[Candidate, list[dict]]], p99_ms: float,
           reference: list[dict] | None) -> tuple[Candidate, list[dict]] | None:
  """The highest-scoring result not worse than `reference` at any level (all
  results when there is no reference); None when none meets the target.
  `reference` is one of `results` (the tuner measures the shipped
  configuration in every rung), so when it meets the target somewhere it is
  itself eligible, and None means that nothing meets the target."""
  eligible = [r for r in results if score(r[1], p99_ms) > 0
              and (reference is None or not_worse(r[1], reference, p99_ms))]
  if not eligible:
    return None
  return max(eligible, key=lambda r: score(r[1], p99_ms))
