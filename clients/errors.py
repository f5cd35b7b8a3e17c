"""The one exception the clients raise for a failed call, on either transport."""

from __future__ import annotations


class ClientError(Exception):
  """A call failed: the status code, the server's message, and what was asked.

  `code` is a TF Serving / gRPC status name ("INVALID_ARGUMENT", "NOT_FOUND",
  "UNAVAILABLE", "DEADLINE_EXCEEDED", ...) whichever transport was used, so
  callers can branch on it; `attempts` counts the tries made (retries
  included).
  """

  def __init__(self, code: str, message: str, request: str, attempts: int = 1):
    self.code = code
    self.message = message
    self.request = request
    self.attempts = attempts
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    super().__init__(f"{code}: {message} ({request}{tries})")
