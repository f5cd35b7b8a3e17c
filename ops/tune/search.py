"""What the tuner tries, in which order, and how it picks: successive halving
over batching configurations, with a refinement step around the leader.

The shipped configuration is measured first, at the long rung's duration
(its figures serve both rungs, so it costs one server start, not two).
Every other configuration is first measured briefly (the "short" rung):
the coarse set spans the dimensions that matter most (batching off, the
largest batch, the timeout), then the neighbours of the best one found so
far are tried, one dimension changed at a time. The best few of the short
rung are measured again for longer (the "long" rung), then the shipped
configuration once more, and the choice is made from those figures only.
A brute-force grid of the same dimensions is 100+ server starts; this is
10 to 20.

The score of a configuration is its goodput summed over the concurrency
levels: at each level, the throughput if its p99 latency meets the target
and no request failed, else 0. The rule against the shipped configuration
is noise-aware (`floors`, `shortfall`): its two runs, one before and one
after the others, bound this machine's run-to-run noise. Another
configuration replaces it only if, at every level, it is at least the
shipped one's worse run or within `TOLERANCE` of its better run, and its
score beats the better run's by `GAIN`: a difference smaller than the
shipped configuration's own spread is not a gain, and the tuner's answer
is then the shipped configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

from google.protobuf import text_format

from contract import protos

TOLERANCE = 0.95   # a level is "not worse" at >= 95% of the shipped configuration's better run
GAIN = 1.05        # a replacement must score 5% above the shipped configuration's better run
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


def coarse(max_concurrency: int) -> list[Candidate]:
  """The coarse set in the order it is measured: no batching, then COARSE
  (batch sizes up to the largest concurrency)."""
  limit = max(max_concurrency, 2)
  found = [OFF] + [make(size, timeout, 2, max_concurrency) for size, timeout in COARSE
                   if size <= limit]
  return unique(found if len(found) > 1 else found + [make(2, 0, 2, max_concurrency)])


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


def unique(candidates: Iterable[Candidate], smallest: int = 1) -> list[Candidate]:
  """Each configuration once, without those whose max_batch_size is under
  `smallest`: the largest batch the served version's warmup file sends
  (a server fails such a version's load: "Task size 4 is larger than
  maximum input batch size 2")."""
  seen, out = set(), []
  for c in candidates:
    if c.key not in seen and (c.off or c.max_batch_size >= smallest):
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


def floors(references: Sequence[Sequence[dict]], p99_ms: float) -> dict[int, float]:
  """concurrency -> the goodput another configuration must reach there: the
  shipped configuration's worse run, or TOLERANCE of its better run when the
  runs agree more closely than that (with one run: TOLERANCE of it). Levels
  where no reference run meets the target ask for nothing."""
  runs = [goodput(r, p99_ms) for r in references]
  levels = sorted({c for run in runs for c in run})
  return {c: min(TOLERANCE * max(g), min(g))
          for c in levels if max(g := [run.get(c, 0.0) for run in runs]) > 0}


def shortfall(levels: Sequence[dict], references: Sequence[Sequence[dict]],
              p99_ms: float) -> str | None:
  """Why `levels` may not replace the reference (None when it may): the
  first level under its floor, or a total gain under GAIN."""
  mine = goodput(levels, p99_ms)
  for c, floor in floors(references, p99_ms).items():
    if mine.get(c, 0.0) < floor:
      return (f"at c={c} it gives {mine.get(c, 0.0):.1f} req/s at the target, under the "
              f"shipped configuration's {floor:.1f}")
  best = max((score(r, p99_ms) for r in references), default=0.0)
  if score(levels, p99_ms) < GAIN * best:
    return (f"its summed goodput {score(levels, p99_ms):.0f} req/s is not {GAIN:.2f}x the "
            f"shipped configuration's {best:.0f} (within its noise)")
  return None


def choose(results: Sequence[tuple[Candidate, list[dict]]],
           p99_ms: float) -> tuple[Candidate, list[dict]] | None:
  """The highest-scoring result that may replace the shipped configuration
  (`shortfall` is None against the shipped runs among `results`); else the
  shipped configuration's better run, when it meets the target somewhere.
  Without a shipped run the highest score wins. None when nothing eligible
  meets the target."""
  shipped = [r for r in results if r[0].source == "shipped"]
  references = [levels for _, levels in shipped]
  others = [r for r in results if r[0].source != "shipped" and score(r[1], p99_ms) > 0
            and shortfall(r[1], references, p99_ms) is None]
  if others:
    return max(others, key=lambda r: score(r[1], p99_ms))
  best = max(shipped, key=lambda r: score(r[1], p99_ms), default=None)
  return best if best is not None and score(best[1], p99_ms) > 0 else None
