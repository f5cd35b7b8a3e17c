"""Request, batching and load metrics, exported in Prometheus' text format.

An operator's dashboards and alerts must carry over from tensorflow_model_server,
so TF Serving's metrics keep its names (its exporter turns "/" into ":"),
labels, units (microseconds) and semantics:

- `:tensorflow:serving:request_count{model_name,status}`: Predict, Classify
  and Regress over gRPC, and every /v1 request over REST (model
  status/metadata GETs and requests refused before the model included),
  recorded by the front ends as prediction_service_impl.cc and
  http_server.cc record them (see Call);
- `:tensorflow:serving:request_latency{model_name,API,entrypoint}`: the same
  calls, successful ones only; API is "Predict"/"Classify"/"Regress" on gRPC
  and the lowercase URL verb on REST ("" for GETs);
- `:tensorflow:serving:batching_session:*` (batching/batching_session.cc,
  batching_util.h): input/processed batch sizes, padding per execution batch
  size, queuing latency per thread pool, wrapped session runs;
- `:tensorflow:cc:saved_model:load_attempt_count{model_path,status}` (status
  "success"/"fail") and `load_latency{model_path}` (a counter of
  microseconds of successful loads), as TF's SavedModel loader keeps them.

TF Serving has no per-version request metrics; an A/B comparison needs them,
so `:embedded_serving:request_count` / `:embedded_serving:request_latency`
add `model_version` and `signature_name` and count every call that
reached a service about a version (embedded server only).  The text format is written by hand: a few lines, not worth a
dependency.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import math
import threading
import time
from typing import Iterable, Iterator, Sequence

from serving.errors import ServingError


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
  """TF's monitoring::Buckets::Exponential upper bounds."""
  return tuple(scale * growth**i for i in range(count))


LATENCY_BUCKETS_US = exponential_buckets(10, 1.8, 33)
_ABOUT_NO_VERSION = ("GetModelStatus", "HandleReloadConfigRequest")
BATCH_BUCKETS = tuple(float(2**i) for i in range(14))


@dataclasses.dataclass
class Call:
  """One request as the request metrics see it.  The front end that took it
  fills in where it came from and which API it is; the service fills in the
  version and signature it resolved, so that a failed call is counted on
  its version too.

  `entrypoint`: "GRPC" or "REST", TF Serving's entrypoint label.
  `api`: TF Serving's API label, or None for the calls TF Serving keeps no
  request metrics for (gRPC GetModelMetadata, GetModelStatus,
  MultiInference, HandleReloadConfigRequest).
  `method`: the service method that handled the call ("Predict",
  "GetModelMetadata", ...), the per-version metrics' API label; "" when no
  service was reached (a REST request refused while being parsed).  The
  per-version metrics leave out calls about no version: model status polls
  and config reloads.
  """
  entrypoint: str = ""
  api: str | None = None
  method: str = ""
  model: str = ""
  version: int | None = None
  signature: str = ""


class _Family:

  def __init__(self, name: str, help_: str, labels: Sequence[str]):
    self.name = name
    self.help = help_
    self.labels = tuple(labels)
    self._lock = threading.Lock()

  def _key(self, values: Sequence[object]) -> tuple[str, ...]:
    if len(values) != len(self.labels):
      raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
    return tuple(str(v) for v in values)

  def _label_text(self, key: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(self.labels, key)]
    if extra:
      parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter(_Family):

  def __init__(self, name: str, help_: str, labels: Sequence[str]):
    super().__init__(name, help_, labels)
    self._values: dict[tuple[str, ...], float] = {}

  def inc(self, *labels: object, amount: float = 1) -> None:
    key = self._key(labels)
    with self._lock:
      self._values[key] = self._values.get(key, 0) + amount

  def values(self) -> dict[tuple[str, ...], float]:
    with self._lock:
      return dict(self._values)

  def render(self) -> Iterable[str]:
    yield f"# HELP {self.name} {self.help}"
    yield f"# TYPE {self.name} counter"
    for key, value in sorted(self.values().items()):
      yield f"{self.name}{self._label_text(key)} {_num(value)}"


class Histogram(_Family):

  def __init__(self, name: str, help_: str, labels: Sequence[str], buckets: Sequence[float]):
    super().__init__(name, help_, labels)
    self.buckets = tuple(buckets)
    self._cells: dict[tuple[str, ...], list] = {}   # key -> [counts per bucket + inf, sum, n]

  def observe(self, value: float, *labels: object) -> None:
    key = self._key(labels)
    with self._lock:
      cell = self._cells.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0, 0])
      cell[0][bisect.bisect_left(self.buckets, value)] += 1
      cell[1] += value
      cell[2] += 1

  def summary(self) -> dict[tuple[str, ...], dict[str, float]]:
    """{labels: {"count", "sum", "mean"}} for Python callers."""
    with self._lock:
      return {k: {"count": c[2], "sum": c[1], "mean": c[1] / c[2] if c[2] else math.nan}
              for k, c in self._cells.items()}

  def render(self) -> Iterable[str]:
    yield f"# HELP {self.name} {self.help}"
    yield f"# TYPE {self.name} histogram"
    with self._lock:
      cells = {k: ([*c[0]], c[1], c[2]) for k, c in self._cells.items()}
    for key, (counts, total, n) in sorted(cells.items()):
      running = 0
      for bound, count in zip([*self.buckets, math.inf], counts):
        running += count
        le = "+Inf" if bound == math.inf else _num(bound)
        labels = self._label_text(key, 'le="' + le + '"')
        yield f"{self.name}_bucket{labels} {running}"
      yield f"{self.name}_sum{self._label_text(key)} {_num(total)}"
      yield f"{self.name}_count{self._label_text(key)} {n}"


class Metrics:
  """Every metric the server records; one instance per server."""

  def __init__(self):
    self.request_count = Counter(
        ":tensorflow:serving:request_count",
        "The total number of requests.", ["model_name", "status"])
    self.request_latency = Histogram(
        ":tensorflow:serving:request_latency",
        "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
        ["model_name", "API", "entrypoint"], LATENCY_BUCKETS_US)
    self.input_batch_size = Histogram(
        ":tensorflow:serving:batching_session:input_batch_size",
        "Tracks the batch size distribution on the inputs.", [], BATCH_BUCKETS)
    self.processed_batch_size = Histogram(
        ":tensorflow:serving:batching_session:processed_batch_size",
        "Tracks the batch size distribution on processing.", [], BATCH_BUCKETS)
    self.padding_size = Histogram(
        ":tensorflow:serving:batching_session:padding_size",
        "Tracks the padding size distribution on batches.", ["execution_batch_size"],
        BATCH_BUCKETS)
    self.queuing_latency = Histogram(
        ":tensorflow:serving:batching_session:queuing_latency",
        "Distribution of wall time spent (in microseconds) in queuing", ["thread_pool_name"],
        exponential_buckets(100, 1.2, 52))
    self.wrapped_run_count = Counter(
        ":tensorflow:serving:batching_session:wrapped_run_count",
        "Total count of run calls on the wrapped session", [])
    self.load_attempt_count = Counter(
        ":tensorflow:cc:saved_model:load_attempt_count",
        "The number of times a SavedModel was successfully loaded.", ["model_path", "status"])
    self.load_latency = Counter(
        ":tensorflow:cc:saved_model:load_latency",
        "Latency in microseconds for SavedModels that were successfully loaded.",
        ["model_path"])
    self.version_request_count = Counter(
        ":embedded_serving:request_count",
        "Requests per model version and signature (embedded server only).",
        ["model_name", "model_version", "signature_name", "API", "entrypoint", "status"])
    self.version_request_latency = Histogram(
        ":embedded_serving:request_latency",
        "Wall time (in microseconds) per model version and signature (embedded server only).",
        ["model_name", "model_version", "signature_name", "API", "entrypoint"],
        LATENCY_BUCKETS_US)
    self._all = [self.request_count, self.request_latency, self.input_batch_size,
                 self.processed_batch_size, self.padding_size, self.queuing_latency,
                 self.wrapped_run_count, self.load_attempt_count, self.load_latency,
                 self.version_request_count, self.version_request_latency]

  def record_request(self, call: Call, status: str, latency_us: float) -> None:
    """One handled call, as its front end saw it (see Call)."""
    if call.api is not None:
      self.request_count.inc(call.model, status)
      if status == "OK":
        self.request_latency.observe(latency_us, call.model, call.api, call.entrypoint)
    if not call.method or call.method in _ABOUT_NO_VERSION:
      return
    v = "" if call.version is None else call.version
    labels = (call.model, v, call.signature, call.method, call.entrypoint)
    self.version_request_count.inc(*labels, status)
    self.version_request_latency.observe(latency_us, *labels)

  @contextlib.contextmanager
  def observe(self, call: Call) -> Iterator[Call]:
    """Times the block and records `call` with the status it ends in: a
    ServingError's code, CANCELLED when the client went away, INTERNAL for
    anything else (the exception propagates)."""
    started = time.perf_counter()
    status = "OK"
    try:
      yield call
    except ServingError as e:
      status = e.code_name
      raise
    except asyncio.CancelledError:
      status = "CANCELLED"
      raise
    except Exception:
      status = "INTERNAL"
      raise
    finally:
      self.record_request(call, status, (time.perf_counter() - started) * 1e6)

  def record_batch(self, *, inputs: int, padded: int) -> None:
    """One batch run on the wrapped session (batching_session.cc)."""
    self.processed_batch_size.observe(padded)
    self.padding_size.observe(padded - inputs, padded)
    self.wrapped_run_count.inc()

  def record_load(self, model_path: str, ok: bool, seconds: float) -> None:
    """One SavedModel load attempt of the version at `model_path`, as TF's
    cc/saved_model/loader.cc counts it; latency only for successes."""
    self.load_attempt_count.inc(model_path, "success" if ok else "fail")
    if ok:
      self.load_latency.inc(model_path, amount=round(seconds * 1e6))

  def prometheus_text(self) -> str:
    lines: list[str] = []
    for family in self._all:
      lines.extend(family.render())
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
  return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
  if value == math.inf:
    return "+Inf"
  return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))
