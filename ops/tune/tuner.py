"""The tuner's driver: the search (ops.tune.search) over measurements
(ops.tune.measure) within a time budget, and the report it ends with.

Time is the budget: every server start and every measured second counts,
and the plan is made from what the first server start really cost. The
long rung is reserved first, so the short rungs never eat the time the
final comparison needs; the shipped configuration's second run is
reserved before the finalists, so the noise rule (ops.tune.search) always
has both of its runs when the budget allows one. Ctrl-C ends the search at once; what was measured
until then (completed levels of the current candidate included) is reported
and the choice is made from it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

from contract import model_config as model_config_lib
from contract import warmup as coverage
from ops.tune import measure, search
from ops.tune.report import at_target
from ops.tune.search import Candidate

FINALISTS = 2          # long-rung measurements reserved besides the shipped configuration's two
GUESS_START_S = 20.0   # server start cost assumed until the first start is timed
LONG_SHARE = 0.4       # at most this part of the budget is held back for the long rung
COARSE_SHARE = 0.35    # the coarse set stops here, leaving the rest to refinement


class TuneError(Exception):
  """A clear, one-line (plus context) reason the tuner cannot do its job."""


@dataclasses.dataclass
class Settings:
  model: str
  model_config: Path
  p99_ms: float
  levels: list[int]
  budget_s: float
  server_cmd: str = measure.DEFAULT_COMMAND
  shipped: Path | None = None
  signature: str = "serving_default"
  batch: int = 1
  short_s: float = 1.0
  long_s: float = 3.0
  warmup_s: float = 0.5
  start_timeout_s: float = 300.0


@dataclasses.dataclass
class Result:
  candidate: Candidate
  rung: str                  # "short" or "long"
  levels: list[dict]
  start_s: float | None = None
  complete: bool = False


def served_model(settings: Settings) -> tuple[Path, int, Path]:
  """A models.config with only the tuned model (its base path made absolute,
  as tensorflow_model_server requires), written into a temporary directory;
  the latest version's directory and number. TuneError for an unknown model."""
  try:
    config = model_config_lib.read(settings.model_config)
  except model_config_lib.ModelConfigError as e:
    raise TuneError(str(e)) from None
  entry = model_config_lib.entry(config, settings.model)
  if entry is None:
    known = sorted(m.name for m in config.model_config_list.config)
    raise TuneError(f"unknown model {settings.model!r}: {settings.model_config} has "
                    f"{', '.join(known) if known else 'no models'}"
                    + ("" if known else " (make export builds the default model)"))
  base = Path(entry.base_path)
  if not base.is_absolute():
    base = settings.model_config.resolve().parent / base
  versions = sorted(int(p.name) for p in base.glob("*") if p.name.isdigit()
                    and ((p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists()))
  if not versions:
    raise TuneError(f"model {settings.model!r} has no version under {base}")
  entry.base_path = str(base)
  del config.model_config_list.config[:]
  config.model_config_list.config.append(entry)
  directory = Path(tempfile.mkdtemp(prefix="vit-tune-"))
  path = directory / "models.config"
  path.write_text(model_config_lib.render(config))
  return path, versions[-1], base / str(versions[-1])


class Tuner:
  """One tuning run; `run` returns the report (a dict for report.json)."""

  def __init__(self, settings: Settings, progress: Callable[[float, str], None]):
    self.s = settings
    self.progress = progress           # (seconds used, what now)
    self.results: list[Result] = []
    self.start_costs: list[float] = []
    self.interrupted = False
    self.plan = measure.Plan(settings.model, settings.signature, settings.batch,
                             settings.levels, settings.warmup_s, settings.start_timeout_s)

  # ------------------------------------------------------------- budget

  def _cost(self, duration: float) -> float:
    start = max(self.start_costs) if self.start_costs else GUESS_START_S
    return start + 2 + len(self.s.levels) * (duration + self.s.warmup_s + 0.3)

  def _left(self) -> float:
    return self.deadline - time.monotonic()

  def minimum_budget(self) -> float:
    return len(self.s.levels) * (self.s.short_s + self.s.warmup_s) + 5

  # ------------------------------------------------------------- running

  def _measure(self, candidate: Candidate, rung: str) -> Result:
    duration = self.s.short_s if rung == "short" else self.s.long_s
    result = Result(candidate, rung, [])
    self.results.append(result)
    self.progress(self._used(), f"{rung}: {candidate.name}: starting")
    with tempfile.TemporaryDirectory(prefix="vit-tune-") as workdir:
      server = measure.Server(self.s.server_cmd, candidate, Path(workdir), self.config_path,
                              self.s.model, timeout=self.s.start_timeout_s)
      try:
        result.start_s = round(server.start_seconds, 2)
        self.start_costs.append(server.start_seconds)
        self.progress(self._used(), f"{rung}: {candidate.name}")

        def level_done(row: dict) -> None:
          result.levels.append(row)
          self.progress(self._used(), f"{rung}: {candidate.name}: c={row['concurrency']} "
                                      f"{row['throughput']:.0f} req/s p99 {row['p99_ms']:.1f} ms")
        measure.measure(server, self.plan, duration, self.s.p99_ms, on_level=level_done)
        result.complete = True
      finally:
        server.stop()
    return result

  def _used(self) -> float:
    return time.monotonic() - self.started

  def _fits(self, rung: str, reserve: float = 0.0) -> bool:
    return self._left() - reserve >= self._cost(self.s.short_s if rung == "short"
                                                else self.s.long_s)

  def _search(self, shipped: Candidate | None) -> None:
    cmax = max(self.s.levels)

    def long_cost() -> float:    # a function: the start costs it counts change as it runs
      return self._cost(self.s.long_s)

    def reserve() -> float:      # the long rung's share: all of it, or 40% of the budget
      return min((FINALISTS + (shipped is not None)) * long_cost(), LONG_SHARE * self.s.budget_s)
    tried: set[tuple] = set()

    def short(candidate: Candidate) -> None:
      tried.add(candidate.key)
      self._measure(candidate, "short")

    if shipped is not None:    # first run at the long duration: the reference of both rungs
      tried.add(shipped.key)
      self._measure(shipped, "long")
    # no candidate the served version's warmup file would fail to load with
    smallest = max((b for sizes in coverage.warmed_batch_sizes(self.version_dir).values()
                    for b in sizes), default=1)
    for candidate in search.unique(search.coarse(cmax), smallest):
      if candidate.key not in tried and (not self.results or (
          self._used() < COARSE_SHARE * self.s.budget_s and self._fits("short", reserve()))):
        short(candidate)
    while self._ranking():     # refine around the leader until it stops changing
      leader = self._ranking()[0].candidate
      fresh = [c for c in search.unique(search.neighbours(leader, cmax), smallest)
               if c.key not in tried]
      for candidate in fresh:
        if self._fits("short", reserve()):
          short(candidate)
      if not fresh or self._ranking()[0].candidate.key == leader.key \
          or not self._fits("short", reserve()):
        break
    # the best FINALISTS at least (their time was reserved), more while the
    # budget lasts (refinement may converge early); each is held to the
    # shipped runs by the noise rule, so a lucky short run cannot win alone
    finalists = [r.candidate for r in self._ranking() if r.candidate.source != "shipped"]
    for candidate in finalists:
      if not self._fits("long", long_cost() if shipped is not None else 0.0):
        break
      self._measure(candidate, "long")
    if shipped is not None and self._fits("long"):   # its second run bounds the noise
      self._measure(shipped, "long")

  def _ranking(self) -> list[Result]:
    """Every measurement so far (the shipped configuration's runs included),
    best first: those the choice rule would let replace the shipped
    configuration on these figures, then by score. A high score bought by
    falling short at one level can never be chosen, so it must not take a
    finalist's place or steer the refinement."""
    results = [r for r in self.results if r.levels]
    shipped = [r.levels for r in results if r.candidate.source == "shipped"]

    def key(r: Result) -> tuple[bool, float]:
      return (r.candidate.source == "shipped"
              or search.shortfall(r.levels, shipped, self.s.p99_ms) is None,
              search.score(r.levels, self.s.p99_ms))
    return sorted(results, key=key, reverse=True)

  def run(self) -> dict:
    if self.s.budget_s < self.minimum_budget():
      raise TuneError(f"a budget of {self.s.budget_s:g} s is too small: one configuration "
                      f"at {len(self.s.levels)} concurrency levels needs at least "
                      f"{self.minimum_budget():.0f} s plus a server start")
    try:
      shipped = search.read_batching_file(self.s.shipped) if self.s.shipped else None
    except ValueError as e:
      raise TuneError(str(e)) from None
    self.config_path, self.version, self.version_dir = served_model(self.s)
    self.started = time.monotonic()
    self.deadline = self.started + self.s.budget_s
    try:
      self._search(shipped)
    except KeyboardInterrupt:
      self.interrupted = True
    finally:
      (self.config_path.parent / "models.config").unlink(missing_ok=True)
      os.rmdir(self.config_path.parent)
    return self._report(shipped)

  # ------------------------------------------------------------- choosing

  def _report(self, shipped: Candidate | None) -> dict:
    measured = [r for r in self.results if r.levels]
    if not measured:
      raise TuneError(f"nothing was measured in the budget of {self.s.budget_s:g} s "
                      f"(a server start took {max(self.start_costs, default=0):.0f} s); "
                      "give a larger budget" if not self.interrupted
                      else "interrupted before any configuration was measured")
    decided = decide(measured, self.s.p99_ms)
    if decided is None:
      closest = min(((r, lv) for r in measured for lv in r.levels), key=lambda x: x[1]["p99_ms"])
      raise TuneError(
          f"no configuration meets p99 <= {self.s.p99_ms:g} ms at any concurrency in "
          f"{self.s.levels[0]}..{self.s.levels[-1]}; closest: {closest[0].candidate.name} "
          f"at c={closest[1]['concurrency']}: p99 {closest[1]['p99_ms']:.1f} ms, "
          f"{closest[1]['throughput']:.1f} req/s")
    chosen, rung, pool = decided
    shipped_runs = [r for r in pool if r.candidate.source == "shipped"]
    shipped_result = max(shipped_runs, key=lambda r: search.score(r.levels, self.s.p99_ms),
                         default=None)
    warmed = sorted(coverage.warmed_batch_sizes(self.version_dir).get(self.s.signature, ()))
    needs = [] if chosen.candidate.off else coverage.required_batch_sizes(
        chosen.candidate.allowed_batch_sizes, chosen.candidate.max_batch_size)
    return {
        "model": self.s.model, "version": self.version, "version_dir": str(self.version_dir),
        "signature": self.s.signature, "batch": self.s.batch, "levels": self.s.levels,
        "target": {"p99_ms": self.s.p99_ms},
        "durations_s": {"short": self.s.short_s, "long": self.s.long_s,
                        "warmup": self.s.warmup_s},
        "budget_s": self.s.budget_s, "used_s": round(self._used(), 1),
        "interrupted": self.interrupted, "decided_on": rung,
        "host": platform.node(), "cpus": len(os.sched_getaffinity(0)),
        "server_command": self.s.server_cmd,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "chosen": chosen.candidate.as_dict(),
        "chosen_at_target": at_target(chosen.levels, self.s.p99_ms),
        "shipped": shipped.as_dict() if shipped else None,
        "shipped_at_target": at_target(shipped_result.levels, self.s.p99_ms)
        if shipped_result else None,
        "shipped_runs": len(shipped_runs),
        "why": why(chosen, pool, self.s.p99_ms),
        "warmup": {"needs": needs, "warmed": warmed,
                   "missing": [b for b in needs if b not in warmed]},
        "candidates": [{"candidate": r.candidate.as_dict(), "rung": r.rung,
                        "start_s": r.start_s, "complete": r.complete,
                        "chosen": r is chosen,
                        "score": round(search.score(r.levels, self.s.p99_ms), 1),
                        "levels": r.levels} for r in self.results],
    }


def decide(results: list[Result], p99_ms: float) -> tuple[Result, str, list[Result]] | None:
  """The chosen result, the rung decided on and the pool chosen from. The
  long rung decides; when every long result missed the target (the
  machine's load changed meanwhile), the short rung, still held to the
  shipped configuration's runs. None when nothing meets the target."""
  for rung in ("long", "short"):
    pool = [r for r in results if r.levels and (r.rung == rung
                                                or r.candidate.source == "shipped")]
    picked = search.choose([(r.candidate, r.levels) for r in pool], p99_ms)
    if picked is not None:
      return next(r for r in pool if r.levels is picked[1]), rung, pool
  return None


def why(chosen: Result, pool: list[Result], p99_ms: float) -> str:
  """One sentence from the server's own batching metrics at the chosen
  configuration's best level, and against the shipped configuration: why
  the best other configuration may not replace it, or by how much the
  chosen one beats it."""
  best = at_target(chosen.levels, p99_ms)
  level = next(lv for lv in chosen.levels if lv["concurrency"] == best["concurrency"])
  parts = [f"at concurrency {best['concurrency']} it serves {best['throughput']:.1f} req/s "
           f"with p99 {best['p99_ms']:.1f} ms"]
  if "mean_batch_size" in level:
    parts.append(f"the server ran batches of {level['mean_batch_size']:g} requests on "
                 f"average (padded to {level['mean_padded_batch_size']:g}, "
                 f"{100 * level['padding_fraction']:.0f}% padding) after "
                 f"{level['mean_queueing_ms']:.2f} ms of queueing")
  elif chosen.candidate.off:
    parts.append("without batching every request runs alone, with no queueing delay")

  def score(result: Result) -> float:
    return search.score(result.levels, p99_ms)
  shipped = [r for r in pool if r.candidate.source == "shipped"]
  others = sorted((r for r in pool if r.candidate.source != "shipped" and r is not chosen),
                  key=score, reverse=True)
  if chosen.candidate.source == "shipped":
    if others:
      reason = search.shortfall(others[0].levels, [r.levels for r in shipped], p99_ms)
      parts.append(f"the shipped configuration stays ({len(shipped)} run(s)): the best other, "
                   f"{others[0].candidate.name}, may not replace it: "
                   f"{reason or 'it misses the target'}")
  elif shipped:
    parts.append(f"its summed goodput is {score(chosen) / max(map(score, shipped)):.2f}x the "
                 f"shipped configuration's better of {len(shipped)} run(s), and at least "
                 "its floor at every level")
  elif others:
    g = search.goodput(others[0].levels, p99_ms).get(best["concurrency"], 0.0)
    parts.append(f"the runner-up ({others[0].candidate.name}) gives {g:.1f} req/s at that "
                 f"level, {best['throughput'] / g:.2f}x less" if g else
                 f"the runner-up ({others[0].candidate.name}) misses the target at that level")
  return "; ".join(parts) + "."
