"""The client API, written once over an abstract transport.

`GrpcClient` and `RestClient` only turn one request into one response; the
choice of signature, input naming, batching, per-call settings and result
decoding live here, so both transports behave the same and are tested
against each other. The asyncio clients (clients.aio) reuse everything here
but the awaiting.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from clients import batching, preprocessing
import contract
from clients.errors import ClientError
from clients.results import ModelMetadata, Prediction, VersionStatus
from clients.retry import RetryPolicy
from clients.tensors import as_array

# The SavedModel contract's signatures (contract, docs/design.md).
IMAGES, PIXELS, ENCODED = contract.IMAGES, contract.PIXELS, contract.ENCODED

Headers = Mapping[str, str] | Sequence[tuple[str, str]]

# Answers that mean "not ready (yet)", as opposed to a misconfigured call.
_NOT_READY = frozenset({"NOT_FOUND", "UNAVAILABLE", "FAILED_PRECONDITION", "DEADLINE_EXCEEDED"})


@dataclasses.dataclass(frozen=True)
class ModelRef:
  """Which model to ask: by name, and a version number or a version label
  (neither: the server's latest)."""
  name: str
  version: int | None = None
  label: str | None = None

  def __post_init__(self) -> None:
    if self.version is not None and self.label is not None:
      raise ValueError(f"model {self.name}: give a version or a label, not both")

  def __str__(self) -> str:
    if self.version is not None:
      return f"model {self.name!r} version {self.version}"
    if self.label is not None:
      return f"model {self.name!r} label {self.label!r}"
    return f"model {self.name!r} (latest)"


@dataclasses.dataclass(frozen=True)
class Call:
  """One call's settings: its deadline in seconds (retries included), the
  headers sent with each request (gRPC metadata on gRPC; names lower-case, as
  gRPC requires) and the outputs wanted (empty: all)."""
  timeout: float
  headers: tuple[tuple[str, str], ...] = ()
  output_filter: tuple[str, ...] = ()


class Common:
  """What the sync and async clients share: settings and request preparation.

  `timeout` is each call's deadline in seconds, retries included; `retry`
  says which failures are retried and how (see RetryPolicy); inputs larger
  than `batch_size` rows are sent as several requests (and a smaller limit
  named by the server is adopted). `headers` go with every call (e.g.
  {"authorization": "Bearer ..."}); per-call headers are added to them.
  `compression` gzips request bodies (gRPC's gzip, REST's Content-Encoding).
  """

  transport = ""

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = batching.DEFAULT_BATCH_SIZE, headers: Headers | None = None,
               compression: bool = False):
    if timeout <= 0:
      raise ValueError(f"timeout must be positive, got {timeout}")
    batching.check_batch_size(batch_size)
    self.target = target
    self.url = f"{self.transport}://{target}"  # for messages
    self.timeout = timeout
    self.retry = retry or RetryPolicy()
    self.batch_size = batch_size
    self.headers = _header_pairs(headers)
    self.compression = compression

  def _call(self, timeout: float | None = None, headers: Headers | None = None,
            output_filter: Sequence[str] | None = None) -> Call:
    if timeout is not None and timeout <= 0:
      raise ValueError(f"timeout must be positive, got {timeout}")
    return Call(self.timeout if timeout is None else timeout,
                self.headers + _header_pairs(headers), tuple(output_filter or ()))

  def _plan(self, n: int, batch_size: int | None, progress: bool | None,
            desc: str) -> batching.Plan:
    return batching.Plan(n, batch_size or self.batch_size, progress=progress, desc=desc)

  def _learn(self, plan: batching.Plan) -> None:
    """Keeps a batch limit the server named for the following calls."""
    self.batch_size = min(self.batch_size, plan.batch_size)

  @staticmethod
  def _arrays(inputs: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    arrays = {name: as_array(value) for name, value in inputs.items()}
    rows = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if len(rows) != 1 or None in rows:
      raise ValueError(f"inputs must share one batch dimension, got shapes "
                       f"{ {n: a.shape for n, a in arrays.items()} }")
    return arrays, rows.pop()

  @staticmethod
  def _images(images: np.ndarray) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.dtype.kind != "f":
      raise TypeError(f"images must be preprocessed floats, got {images.dtype}; "
                      "send raw pixels with predict_pixels")
    return {IMAGES.input_key: images.astype(IMAGES.dtype, copy=False)}

  @staticmethod
  def _pixels(pixels: np.ndarray) -> dict[str, np.ndarray]:
    pixels = np.asarray(pixels)
    if pixels.dtype != PIXELS.dtype:
      raise TypeError(f"pixels must be {PIXELS.dtype}, got {pixels.dtype}")
    return {PIXELS.input_key: pixels}

  @staticmethod
  def _encoded(sources: Sequence[Any], rows: slice) -> dict[str, np.ndarray]:
    data = np.empty(rows.stop - rows.start, dtype=object)
    data[:] = [preprocessing.read_bytes(s) for s in sources[rows]]
    return {ENCODED.input_key: data}

  @staticmethod
  def _ready(statuses: list[VersionStatus]) -> bool:
    return any(s.state == "AVAILABLE" for s in statuses)

  @staticmethod
  def _not_ready(error: ClientError, label: str | None) -> bool:
    """Whether a failed readiness check means "not ready" rather than a wrong call.
    TF Serving answers INVALID_ARGUMENT for a label it does not know (yet)."""
    if label is not None and error.code == "INVALID_ARGUMENT":
      return True
    return error.code in _NOT_READY and error.transient


class Client(Common, abc.ABC):
  """Predict, metadata, status and health against TF Serving or the embedded server.

  Every call takes `timeout` and `headers` to override the client's; predict
  calls take `output_filter` (output names; the rest are not computed or sent,
  on gRPC; REST has no such field in TF Serving, so there they are dropped on
  arrival).
  """

  # -- the transport's part -------------------------------------------------

  @abc.abstractmethod
  def _predict(self, model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
               call: Call) -> Prediction:
    """One Predict request."""

  @abc.abstractmethod
  def _metadata(self, model: ModelRef, call: Call) -> ModelMetadata:
    """GetModelMetadata."""

  @abc.abstractmethod
  def _status(self, model: ModelRef, call: Call) -> list[VersionStatus]:
    """GetModelStatus, newest version first."""

  @abc.abstractmethod
  def _live(self, call: Call) -> bool:
    """Whether the server answers at all (one attempt)."""

  def close(self) -> None:
    """Releases the connection; the client cannot be used afterwards."""

  # -- the shared API -------------------------------------------------------

  def predict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
              label: str | None = None, signature: str = contract.DEFAULT.name,
              batch_size: int | None = None, progress: bool | None = None,
              timeout: float | None = None, headers: Headers | None = None,
              output_filter: Sequence[str] | None = None) -> Prediction:
    """Any signature, inputs by name; rows beyond batch_size go in several requests."""
    ref = ModelRef(model, version, label)
    call = self._call(timeout, headers, output_filter)
    arrays, n = self._arrays(inputs)
    plan = self._plan(n, batch_size, progress, model)
    result = batching.run_batched(
        lambda rows: self._predict(ref, signature, {k: a[rows] for k, a in arrays.items()}, call),
        plan)
    self._learn(plan)
    return result

  def predict_images(self, model: str, images: np.ndarray, **kwargs: Any) -> Prediction:
    """`serving_default` on preprocessed float32 [b, S, S, 3] in [-1, 1]
    (see clients.preprocessing)."""
    return self.predict(model, self._images(images), signature=IMAGES.name, **kwargs)

  def predict_pixels(self, model: str, pixels: np.ndarray, **kwargs: Any) -> Prediction:
    """`predict_uint8` on raw uint8 [b, S, S, 3] pixels at the model's size."""
    return self.predict(model, self._pixels(pixels), signature=PIXELS.name, **kwargs)

  def predict_encoded(self, model: str, images: Sequence[bytes | str | os.PathLike], *,
                      version: int | None = None, label: str | None = None,
                      batch_size: int | None = None, progress: bool | None = None,
                      timeout: float | None = None, headers: Headers | None = None,
                      output_filter: Sequence[str] | None = None) -> Prediction:
    """`predict_bytes` on encoded JPEG/PNG/GIF/BMP/WebP images (bytes or file
    paths) of any size: the server decodes and resizes. Files are read one
    batch at a time."""
    ref = ModelRef(model, version, label)
    call = self._call(timeout, headers, output_filter)
    sources = list(images)
    plan = self._plan(len(sources), batch_size, progress, model)
    result = batching.run_batched(
        lambda rows: self._predict(ref, ENCODED.name, self._encoded(sources, rows), call), plan)
    self._learn(plan)
    return result

  def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
               timeout: float | None = None, headers: Headers | None = None) -> ModelMetadata:
    """The signatures of a model version (GetModelMetadata)."""
    return self._metadata(ModelRef(model, version, label), self._call(timeout, headers))

  def status(self, model: str, *, version: int | None = None, timeout: float | None = None,
             headers: Headers | None = None) -> list[VersionStatus]:
    """The state of each version of a model, newest first (GetModelStatus)."""
    return self._status(ModelRef(model, version), self._call(timeout, headers))

  def image_size(self, model: str, *, version: int | None = None,
                 label: str | None = None) -> int:
    """The model's input size S, from its default signature."""
    return self.metadata(model, version=version, label=label).image_size()

  def is_server_live(self, *, timeout: float | None = None,
                     headers: Headers | None = None) -> bool:
    """Whether the server answers (gRPC: grpc.health.v1; REST: any HTTP answer).
    One attempt, no retries: a liveness probe wants the present state."""
    return self._live(self._call(timeout, headers))

  def is_model_ready(self, model: str, *, version: int | None = None,
                     label: str | None = None, timeout: float | None = None,
                     headers: Headers | None = None) -> bool:
    """Whether the version (a number, a label, or any version) is AVAILABLE."""
    call = self._call(timeout, headers)
    try:
      if label is not None:
        version = self._metadata(ModelRef(model, label=label), call).version
      return self._ready(self._status(ModelRef(model, version), call))
    except ClientError as e:
      if self._not_ready(e, label):
        return False
      raise

  def __enter__(self) -> Client:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _header_pairs(headers: Headers | None) -> tuple[tuple[str, str], ...]:
  items = headers.items() if isinstance(headers, Mapping) else (headers or ())
  return tuple((str(k).lower(), str(v)) for k, v in items)
