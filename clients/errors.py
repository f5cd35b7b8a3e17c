"""The one exception the clients raise for a failed call, on either transport."""

from __future__ import annotations

import re

# TF Serving's batching rejects a request larger than max_batch_size with this
# (batching_util/batch_scheduler.h, "Task size %d is larger than maximum input
# batch size %d"); the clients read the server's limit from it.
_BATCH_LIMIT = re.compile(r"larger than maximum (?:input )?batch size (\d+)")


class ClientError(Exception):
  """A call failed: the status code, the server's message, and what was asked.

  `code` is a TF Serving / gRPC status name ("INVALID_ARGUMENT", "NOT_FOUND",
  "UNAVAILABLE", "DEADLINE_EXCEEDED", ...) whichever transport was used, so
  callers can branch on it; `attempts` counts the tries made (retries
  included). `transient` is False for failures that a retry cannot fix even
  though their code is retryable (a wrong port or protocol); `hint` says what
  to try instead.
  """

  def __init__(self, code: str, message: str, request: str, attempts: int = 1, *,
               transient: bool = True, hint: str = ""):
    self.code = code
    self.message = message
    self.request = request
    self.attempts = attempts
    self.transient = transient
    self.hint = hint
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    advice = f"; {hint}" if hint else ""
    super().__init__(f"{code}: {message} ({request}{tries}){advice}")

  def with_attempts(self, attempts: int) -> ClientError:
    """The same error, counting `attempts` tries."""
    return ClientError(self.code, self.message, self.request, attempts,
                       transient=self.transient, hint=self.hint)

  def batch_limit(self) -> int | None:
    """The server's largest batch, when this error says the request exceeded it."""
    match = _BATCH_LIMIT.search(self.message) if self.code == "INVALID_ARGUMENT" else None
    return int(match[1]) if match else None
