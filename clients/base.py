"""The client API, written once over an abstract transport.

`GrpcClient` and `RestClient` only turn one request into one response; the
choice of signature, input naming, batching and result decoding live here,
so both transports behave the same and are tested against each other.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from clients import batching, contract, preprocessing
from clients.results import ModelMetadata, Prediction, VersionStatus
from clients.retry import RetryPolicy
from clients.tensors import as_array

# The SavedModel contract's signatures (clients.contract, docs/design.md).
IMAGES, PIXELS, ENCODED = contract.IMAGES, contract.PIXELS, contract.ENCODED


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


class Client(abc.ABC):
  """Predict, metadata and status against TF Serving or the embedded server.

  `timeout` is the deadline of each attempt in seconds; `retry` says which
  failures are retried and how (see RetryPolicy); inputs larger than
  `batch_size` rows are sent as several requests.
  """

  transport = ""

  def __init__(self, target: str, *, timeout: float = 30.0,
               retry: RetryPolicy | None = None, batch_size: int = 32):
    self.target = target
    self.timeout = timeout
    self.retry = retry or RetryPolicy()
    self.batch_size = batch_size

  # -- the transport's part -------------------------------------------------

  @abc.abstractmethod
  def _predict(self, model: ModelRef, signature: str,
               inputs: dict[str, np.ndarray]) -> Prediction:
    """One Predict request."""

  @abc.abstractmethod
  def metadata(self, model: str, *, version: int | None = None,
               label: str | None = None) -> ModelMetadata:
    """The signatures of a model version (GetModelMetadata)."""

  @abc.abstractmethod
  def status(self, model: str, *, version: int | None = None) -> list[VersionStatus]:
    """The state of each version of a model, newest first (GetModelStatus)."""

  def close(self) -> None:
    """Releases the connection; the client cannot be used afterwards."""

  # -- the shared API -------------------------------------------------------

  def predict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
              label: str | None = None, signature: str = contract.DEFAULT.name,
              batch_size: int | None = None, progress: bool | None = None) -> Prediction:
    """Any signature, inputs by name; rows beyond batch_size go in several requests."""
    ref = ModelRef(model, version, label)
    arrays = {name: as_array(value) for name, value in inputs.items()}
    rows = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if len(rows) != 1 or None in rows:
      raise ValueError(f"inputs must share one batch dimension, got shapes "
                       f"{ {n: a.shape for n, a in arrays.items()} }")
    return batching.run_batched(
        lambda sl: self._predict(ref, signature, {n: a[sl] for n, a in arrays.items()}),
        rows.pop(), batch_size or self.batch_size, progress=progress, desc=model)

  def predict_images(self, model: str, images: np.ndarray, **kwargs: Any) -> Prediction:
    """`serving_default` on preprocessed float32 [b, S, S, 3] in [-1, 1]
    (see clients.preprocessing)."""
    images = np.asarray(images)
    if images.dtype.kind != "f":
      raise TypeError(f"images must be preprocessed floats, got {images.dtype}; "
                      "send raw pixels with predict_pixels")
    return self.predict(model, {IMAGES.input_key: images.astype(IMAGES.dtype, copy=False)},
                        signature=IMAGES.name, **kwargs)

  def predict_pixels(self, model: str, pixels: np.ndarray, **kwargs: Any) -> Prediction:
    """`predict_uint8` on raw uint8 [b, S, S, 3] pixels at the model's size."""
    pixels = np.asarray(pixels)
    if pixels.dtype != PIXELS.dtype:
      raise TypeError(f"pixels must be {PIXELS.dtype}, got {pixels.dtype}")
    return self.predict(model, {PIXELS.input_key: pixels}, signature=PIXELS.name, **kwargs)

  def predict_encoded(self, model: str, images: Sequence[bytes | str | os.PathLike], *,
                      version: int | None = None, label: str | None = None,
                      batch_size: int | None = None,
                      progress: bool | None = None) -> Prediction:
    """`predict_bytes` on encoded JPEG/PNG images (bytes or file paths) of any
    size: the server decodes and resizes. Files are read one batch at a time."""
    ref = ModelRef(model, version, label)
    sources = list(images)

    def call(rows: slice) -> Prediction:
      data = np.empty(rows.stop - rows.start, dtype=object)
      data[:] = [preprocessing.read_bytes(s) for s in sources[rows]]
      return self._predict(ref, ENCODED.name, {ENCODED.input_key: data})

    return batching.run_batched(call, len(sources), batch_size or self.batch_size,
                                progress=progress, desc=model)

  def image_size(self, model: str, *, version: int | None = None,
                 label: str | None = None) -> int:
    """The model's input size S, from its default signature."""
    return self.metadata(model, version=version, label=label).image_size()

  def __enter__(self) -> Client:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
