"""TF Serving's status codes and its gRPC -> HTTP mapping.

Clients and tools match on the code and on the message text, so every
failure is raised as one `ServingError` carrying a `grpc.StatusCode` and TF
Serving's wording; the gRPC and REST front ends only translate it.
"""

from __future__ import annotations

import grpc

Code = grpc.StatusCode

# tensorflow_serving/model_servers/http_server.cc: ToHTTPStatusCode.
_HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400, Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
  """A request (or load) failure with TF Serving's status code and message."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message

  @property
  def http_status(self) -> int:
    return _HTTP_STATUS.get(self.code, 500)

  @property
  def code_name(self) -> str:
    """The canonical name, e.g. "INVALID_ARGUMENT" (as in StatusProto text)."""
    return self.code.name

  @property
  def code_number(self) -> int:
    return self.code.value[0]

  def __str__(self) -> str:
    return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServingError:
  return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
  return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
  return ServingError(Code.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
  return ServingError(Code.UNAVAILABLE, message)


def deadline_exceeded(message: str = "Deadline Exceeded") -> ServingError:
  return ServingError(Code.DEADLINE_EXCEEDED, message)


def from_tf_error(error: Exception) -> ServingError:
  """A TensorFlow runtime error (bad image bytes, shape clash inside the
  graph, ...) as the status TF Serving would return for it."""
  import tensorflow as tf
  if isinstance(error, tf.errors.OpError):
    name = type(error).__name__
    codes = {"InvalidArgumentError": Code.INVALID_ARGUMENT,
             "NotFoundError": Code.NOT_FOUND,
             "FailedPreconditionError": Code.FAILED_PRECONDITION,
             "ResourceExhaustedError": Code.RESOURCE_EXHAUSTED,
             "OutOfRangeError": Code.OUT_OF_RANGE,
             "UnimplementedError": Code.UNIMPLEMENTED,
             "DeadlineExceededError": Code.DEADLINE_EXCEEDED,
             "UnavailableError": Code.UNAVAILABLE,
             "CancelledError": Code.CANCELLED}
    return ServingError(codes.get(name, Code.INTERNAL), _first_line(error.message))
  if isinstance(error, (TypeError, ValueError)):
    return invalid_argument(_first_line(str(error)))
  return ServingError(Code.INTERNAL, _first_line(f"{type(error).__name__}: {error}"))


def _first_line(message: str) -> str:
  """TF's error text without the "Graph execution error" wrapper, the
  traceback of where the node was defined, and the node list."""
  noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")
  keep = [line.strip() for line in message.split("\n")
          if line.strip() and not line.startswith((" ", "\t"))
          and not line.strip().startswith(noise)]
  return " ".join(keep) or message.strip()
