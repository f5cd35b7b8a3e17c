"""Model warmup, as servables/tensorflow/saved_model_warmup_util.cc: a new
version's assets.extra/tf_serving_warmup_requests (PredictionLog records)
are replayed before it becomes AVAILABLE, so its first requests do not pay
for graph compilation (XLA compiles each new batch size on first use).

The records go through the request path (inference.*, with the Runner's
`run`, so batched when requests would be), but run on the servable directly
and are not counted as requests, as in TF Serving.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from contract import warmup as warmup_file
from serving import inference
from serving.batching import warn_unwarmed
from serving.errors import ServingError, invalid_argument
from serving.runner import Runner
from serving.servable import Servable

WARMUP_FILE = warmup_file.FILE
MAX_WARMUP_RECORDS = 1000         # saved_model_warmup_util.cc's cap


def replay(servable: Servable, *, runner: Runner, options: inference.Options,
           iterations: int = 1) -> int:
  """Replays the version's warmup records `iterations` times each; the
  number of records (0: no warmup file).  Blocking: the loader calls it.
  Warns first when batching pads to sizes the records do not cover."""
  warn_unwarmed(servable, runner.batching_for(servable))
  path = servable.path / WARMUP_FILE
  if not path.exists():
    return 0
  try:
    records = [bytes(r.numpy()) for r in
               tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS + 1)]
  except tf.errors.OpError as e:
    raise invalid_argument(f"Cannot read warmup records {path}: {e.message}") from None
  if len(records) > MAX_WARMUP_RECORDS:
    raise invalid_argument(
        f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
  asyncio.run(_replay(servable, records, iterations, path, runner, options))
  return len(records)


async def _replay(servable: Servable, records: Sequence[bytes], iterations: int, path: Path,
                  runner: Runner, options: inference.Options) -> None:
  run = runner.run_for(servable, None)
  for number, record in enumerate(records, 1):
    try:
      entry = prediction_log_pb2.PredictionLog.FromString(record)
      kind = entry.WhichOneof("log_type")
      if kind == "predict_log":
        call = functools.partial(inference.predict, servable, entry.predict_log.request)
      elif kind == "classify_log":
        call = functools.partial(inference.classify, servable, entry.classify_log.request)
      elif kind == "regress_log":
        call = functools.partial(inference.regress, servable, entry.regress_log.request)
      elif kind == "multi_inference_log":
        call = functools.partial(inference.multi_inference, servable,
                                 entry.multi_inference_log.request)
      else:
        raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
      for _ in range(iterations):
        await call(run, options)
    except ServingError as e:
      raise ServingError(e.code, f"Warmup request {number} of {path} failed: "
                         f"{e.message}") from None
    except Exception as e:  # noqa: BLE001  (DecodeError and the like: a bad file)
      raise invalid_argument(f"Warmup request {number} of {path} failed: "
                             f"{type(e).__name__}: {e}") from None


__all__ = ["MAX_WARMUP_RECORDS", "WARMUP_FILE", "replay"]
