"""Retries with exponential backoff, for transient failures only.

A server that is restarting, or a connection that dropped, answers
UNAVAILABLE: trying again shortly is right. A malformed request, an unknown
model or a deadline that ran out would fail the same way again (or pile more
work on a slow server), so those are raised at once. Both transports map
their failures to status names and share this loop.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable, Iterator, TypeVar

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


def call_with_retries(policy: RetryPolicy, attempt: Callable[[], T]) -> T:
  """`attempt()` until it succeeds, raises a non-retryable ClientError, or
  the attempts run out; the raised error carries the number of tries."""
  delays = policy.delays()
  tries = 0
  while True:
    tries += 1
    try:
      return attempt()
    except ClientError as e:
      delay = next(delays, None) if e.code in policy.retry_on else None
      if delay is None:
        raise ClientError(e.code, e.message, e.request, tries) from e.__cause__
      time.sleep(delay)
