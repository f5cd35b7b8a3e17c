"""Retries with exponential backoff, for transient failures only, within one deadline.

A server that is restarting, or a connection that dropped, answers
UNAVAILABLE: trying again shortly is right. A malformed request, an unknown
model or a deadline that ran out would fail the same way again (or pile more
work on a slow server), so those are raised at once, and so is an UNAVAILABLE
that cannot heal (`ClientError.transient` False: gRPC spoken to a REST port,
a server certificate the client rejects; a handshake the server refuses
reaches the client as a closed socket and is retried like one). The caller's timeout is one deadline for the request and all
its retries: each attempt gets what is left, and no retry starts that could
not finish in time (else `--timeout 30 --attempts 4` takes over 120 s).
Both transports, sync and async, share the schedule; only the sleep differs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Awaitable, Callable, Iterator, TypeVar

from clients.errors import ClientError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """How often and how patiently to retry.

  `attempts` is the total number of tries (1 = no retry). The n-th retry
  waits initial_backoff * multiplier**(n-1), at most max_backoff, shortened by
  up to `jitter` (a fraction) at random so that many clients do not retry in
  lockstep.
  """
  attempts: int = 4
  initial_backoff: float = 0.1
  multiplier: float = 2.0
  max_backoff: float = 2.0
  jitter: float = 0.2
  retry_on: frozenset[str] = frozenset({"UNAVAILABLE"})

  def __post_init__(self) -> None:
    if self.attempts < 1:
      raise ValueError(f"attempts must be >= 1, got {self.attempts}")
    if not 0.0 <= self.jitter < 1.0:
      raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

  def delays(self, rng: random.Random | None = None) -> Iterator[float]:
    """The waits before each retry (attempts - 1 of them)."""
    rng = rng or random.Random()
    delay = self.initial_backoff
    for _ in range(self.attempts - 1):
      capped = min(delay, self.max_backoff)
      yield capped * (1.0 - self.jitter * rng.random())
      delay *= self.multiplier


NO_RETRY = RetryPolicy(attempts=1)


class _Schedule:
  """The tries of one request: what time each attempt has, and whether to retry."""

  def __init__(self, policy: RetryPolicy, timeout: float):
    self.policy = policy
    self.timeout = timeout
    self.deadline = time.monotonic() + timeout
    self.tries = 0
    self._delays = policy.delays()

  def remaining(self) -> float:
    """Seconds left for the next attempt (counted as a try)."""
    self.tries += 1
    return max(self.deadline - time.monotonic(), 0.0)

  def after(self, error: ClientError) -> float:
    """The wait before the next try; re-raises `error` (with the tries) if none."""
    delay = None
    if error.code in self.policy.retry_on and error.transient:
      delay = next(self._delays, None)
    if delay is not None and time.monotonic() + delay >= self.deadline:
      delay = None
    if delay is None:
      raise error.with_attempts(self.tries) from error.__cause__
    return delay


def call_with_retries(policy: RetryPolicy, timeout: float,
                      attempt: Callable[[float], T]) -> T:
  """`attempt(seconds_left)` until it succeeds, raises a non-retryable error,
  the attempts run out or no retry fits in `timeout` seconds."""
  schedule = _Schedule(policy, timeout)
  while True:
    try:
      return attempt(schedule.remaining())
    except ClientError as e:
      time.sleep(schedule.after(e))


async def acall_with_retries(policy: RetryPolicy, timeout: float,
                             attempt: Callable[[float], Awaitable[T]]) -> T:
  """call_with_retries for coroutines: the same schedule, sleeping on the loop."""
  schedule = _Schedule(policy, timeout)
  while True:
    try:
      return await attempt(schedule.remaining())
    except ClientError as e:
      await asyncio.sleep(schedule.after(e))
