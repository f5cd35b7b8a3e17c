"""Which batch sizes a version's warmup file compiles, and which a batching
configuration needs: the warmup coverage check, without TensorFlow.

A jax2tf export compiles its model with XLA once per batch size. With
--enable_batching the server pads every batch up to the next
`allowed_batch_sizes` entry (any size up to `max_batch_size` when the list is
empty), so those are the only sizes the model ever runs at; each one that
`assets.extra/tf_serving_warmup_requests` does not replay while the version
loads is compiled on the request path by the first batch of that size.
The tuner (ops/tune), the embedded server's load log and the tests use this
one check.

The warmup file is a TFRecord file of PredictionLog protos. TFRecord framing
is a little-endian uint64 length, its masked CRC32C, the data and its CRC;
the CRCs are not checked here (TF Serving checks them when it replays the
file, and a corrupt file fails the load there). PredictionLog is not among
the messages `contract.protos` ships, so a wire-compatible subset of it
(predict_log only) is declared here, under a package of its own so that it
can never clash with the real one.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from google.protobuf import descriptor_pb2, message_factory

from contract import protos

FILE = Path("assets.extra") / "tf_serving_warmup_requests"
DEFAULT_SIGNATURE = "serving_default"


def _prediction_log_class() -> type:
  """tensorflow.serving.PredictionLog's predict_log field (number 6, a
  PredictLog whose field 1 is the PredictRequest), as its own message."""
  field = descriptor_pb2.FieldDescriptorProto
  file = descriptor_pb2.FileDescriptorProto(
      name="vit_serving/warmup_prediction_log.proto", package="vit_serving.warmup",
      syntax="proto3", dependency=["tensorflow_serving/apis/predict.proto"])
  log = file.message_type.add(name="PredictLog")
  log.field.add(name="request", number=1, label=field.LABEL_OPTIONAL, type=field.TYPE_MESSAGE,
                type_name=".tensorflow.serving.PredictRequest")
  entry = file.message_type.add(name="PredictionLog")
  entry.field.add(name="predict_log", number=6, label=field.LABEL_OPTIONAL,
                  type=field.TYPE_MESSAGE, type_name=".vit_serving.warmup.PredictLog")
  try:
    protos.POOL.FindFileByName(file.name)
  except KeyError:
    protos.POOL.Add(file)
  return message_factory.GetMessageClass(
      protos.POOL.FindMessageTypeByName("vit_serving.warmup.PredictionLog"))


PredictionLog = _prediction_log_class()


def records(path: str | os.PathLike) -> Iterator[bytes]:
  """The records of a TFRecord file; ValueError on a truncated one."""
  with open(path, "rb") as f:
    while header := f.read(12):
      if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord header")
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise ValueError(f"{path}: truncated TFRecord")
      yield data


def warmed_batch_sizes(version_dir: str | os.PathLike) -> dict[str, set[int]]:
  """signature name -> the batch sizes (0th dimension of the inputs) its
  Predict warmup requests replay; {} when the version has no warmup file."""
  path = Path(version_dir) / FILE
  if not path.is_file():
    return {}
  warmed: dict[str, set[int]] = {}
  for record in records(path):
    entry = PredictionLog.FromString(record)
    if not entry.HasField("predict_log"):
      continue
    request = entry.predict_log.request
    sizes = {t.tensor_shape.dim[0].size for t in request.inputs.values()
             if t.tensor_shape.dim}
    if len(sizes) == 1:
      warmed.setdefault(request.model_spec.signature_name or DEFAULT_SIGNATURE,
                        set()).update(sizes)
  return warmed


def required_batch_sizes(allowed_batch_sizes: Iterable[int], max_batch_size: int) -> list[int]:
  """The batch sizes a batching configuration runs the model at."""
  allowed = sorted(set(int(b) for b in allowed_batch_sizes))
  return allowed or list(range(1, int(max_batch_size) + 1))


def missing(allowed_batch_sizes: Iterable[int], max_batch_size: int,
            warmed: Mapping[str, set[int]], signature: str = DEFAULT_SIGNATURE) -> list[int]:
  """The sizes the configuration needs that `signature`'s warmup leaves cold.

  Only one signature is checked: the exports warm their default signature
  (the path of preprocessed clients and of the A/B router) at every size and
  the others once, at batch size 1 (export/warmup.py)."""
  have = warmed.get(signature, set())
  return [b for b in required_batch_sizes(allowed_batch_sizes, max_batch_size)
          if b not in have]


def describe(sizes: list[int]) -> str:
  """[1, 2, 3, ..., 1000] as "1..1000", short lists as they are."""
  if len(sizes) > 8 and sizes == list(range(sizes[0], sizes[-1] + 1)):
    return f"{sizes[0]}..{sizes[-1]}"
  return ",".join(map(str, sizes))


__all__ = ["DEFAULT_SIGNATURE", "FILE", "describe", "missing", "records",
           "required_batch_sizes", "warmed_batch_sizes"]
