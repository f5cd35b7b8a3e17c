"""One loaded model version: a SavedModel and its signatures.

Any TensorFlow SavedModel serves, TF2 (`tf.function` signatures) and TF1
(graph + SignatureDefs, classify/regress on serialized tf.Example) alike:
`tf.saved_model.load` gives both as concrete functions, which are kept and
called directly with tensors built from numpy, so a request never retraces.
SignatureDefs come from saved_model.pb itself, so metadata, input checks and
error texts are exactly those of the exported file.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, input_pb2,
                                     prediction_log_pb2, regression_pb2)

from serving import tensors
from serving.errors import Code, ServingError, failed_precondition, from_tf_error, invalid_argument

log = logging.getLogger("serving")

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# The raw model call, (servable, signature key, inputs) -> outputs; the
# batching layer substitutes its own.
Executor = Callable[["Servable", str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  dtype: int
  shape: tuple[int, ...] | None     # None: unknown rank; -1: unknown size

  @classmethod
  def from_info(cls, info: meta_graph_pb2.TensorInfo) -> "TensorSpec":
    shape = (None if info.tensor_shape.unknown_rank
             else tuple(d.size for d in info.tensor_shape.dim))
    return cls(info.dtype, shape)


@dataclasses.dataclass
class Signature:
  key: str
  method_name: str
  inputs: dict[str, TensorSpec]
  outputs: dict[str, TensorSpec]
  function: Callable | None = None

  def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
    """Reject what the model would reject, with TF Serving's messages."""
    sent, wanted = set(inputs), set(self.inputs)
    if sent != wanted:
      raise invalid_argument(
          f"input size does not match signature: {len(sent)}!={len(wanted)} "
          f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
          f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
          f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
    for index, name in enumerate(sorted(self.inputs)):
      spec, array = self.inputs[name], inputs[name]
      if tensors.proto_dtype(array) != spec.dtype:
        raise invalid_argument(
            f"Expects arg[{index}] to be {tensors.dtype_name(spec.dtype)} but "
            f"{tensors.dtype_name(tensors.proto_dtype(array))} is provided")
      if spec.shape is not None and not _shape_fits(array.shape, spec.shape):
        raise invalid_argument(
            f"input '{name}' has shape {_fmt(array.shape)} but signature "
            f"'{self.key}' expects {_fmt(spec.shape)} (-1: any size)")

  def check_output_filter(self, output_filter: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    for name in output_filter:
      if name not in self.outputs:
        raise invalid_argument(
            f"output tensor alias not found in signature: {name} Outputs expected to be in "
            f"the set {{{','.join(sorted(self.outputs))}}}.")
      if name in seen:
        raise invalid_argument(f"duplicate output tensor alias: {name}")
      seen.add(name)
    return list(output_filter) or sorted(self.outputs)


def _shape_fits(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
  return len(shape) == len(spec) and all(s == -1 or s == d for d, s in zip(shape, spec))


def _fmt(shape: Sequence[int]) -> str:
  return "[" + ",".join(str(d) for d in shape) + "]"


class Servable:
  """A loaded SavedModel version.  Construct with `Servable.load`."""

  def __init__(self, name: str, version: int, path: Path, signature_defs: Mapping,
               loaded: object, signatures: dict[str, Signature]):
    self.name = name
    self.version = version
    self.path = path
    self.signature_defs = signature_defs
    self.signatures = signatures
    self._loaded = loaded           # keeps variables and functions alive

  @classmethod
  def load(cls, name: str, version: int, path: str | Path,
           tags: Sequence[str] = ("serve",)) -> "Servable":
    path = Path(path)
    meta_graph = _read_meta_graph(path, tags)
    try:
      loaded = tf.saved_model.load(str(path), tags=list(tags))
    except Exception as e:  # noqa: BLE001  (any load failure is the version's status)
      status = from_tf_error(e)
      raise ServingError(status.code, f"Failed to load SavedModel at {path}: "
                         f"{status.message}") from None
    functions = getattr(loaded, "signatures", {})
    signatures: dict[str, Signature] = {}
    for key, sig in meta_graph.signature_def.items():
      if key not in functions:
        continue     # e.g. __saved_model_init_op: listed in metadata, not callable
      signatures[key] = Signature(
          key, sig.method_name,
          {k: TensorSpec.from_info(v) for k, v in sig.inputs.items()},
          {k: TensorSpec.from_info(v) for k, v in sig.outputs.items()},
          functions[key])
    return cls(name, version, path, meta_graph.signature_def, loaded, signatures)

  def signature(self, key: str) -> Signature:
    key = key or DEFAULT_SIGNATURE
    sig = self.signatures.get(key)
    if sig is None:
      raise failed_precondition(f"Serving signature key \"{key}\" not found.")
    return sig

  def call(self, key: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run signature `key` on checked inputs; TF errors become statuses."""
    sig = self.signatures[key]
    try:
      result = sig.function(**{k: tf.constant(v) for k, v in inputs.items()})
      return {k: v.numpy() for k, v in result.items()}
    except ServingError:
      raise
    except Exception as e:  # noqa: BLE001  (bad input must never crash the server)
      raise from_tf_error(e) from None

  def metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
    out = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in self.signature_defs.items():
      out.signature_def[key].CopyFrom(sig)
    return out

  # ------------------------------------------------------------- warmup

  def warmup(self, execute: Executor, iterations: int = 1) -> int:
    """Replay assets.extra/tf_serving_warmup_requests; the number of records."""
    path = self.path / WARMUP_FILE
    if not path.exists():
      return 0
    count = 0
    try:
      for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS + 1):
        count += 1
        if count > MAX_WARMUP_RECORDS:
          raise invalid_argument(
              f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for _ in range(iterations):
          self._replay(entry, execute)
    except ServingError as e:
      raise ServingError(e.code, f"Warmup request {count} of {path} failed: {e.message}") from None
    except tf.errors.OpError as e:
      raise invalid_argument(f"Cannot read warmup records {path}: {e.message}") from None
    return count

  def _replay(self, entry: prediction_log_pb2.PredictionLog, execute: Executor) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
      request = entry.predict_log.request
      sig = self.signature(request.model_spec.signature_name)
      inputs = {k: tensors.to_numpy(v, k) for k, v in request.inputs.items()}
      sig.check_inputs(inputs)
      execute(self, sig.key, inputs)
    elif kind == "classify_log":
      req = entry.classify_log.request
      self.classify(req.model_spec.signature_name, req.input, execute)
    elif kind == "regress_log":
      req = entry.regress_log.request
      self.regress(req.model_spec.signature_name, req.input, execute)
    elif kind == "multi_inference_log":
      for task in entry.multi_inference_log.request.tasks:
        method = self.classify if task.method_name == CLASSIFY_METHOD else self.regress
        method(task.model_spec.signature_name, entry.multi_inference_log.request.input, execute)
    else:
      raise invalid_argument(f"Unsupported log_type for warmup: {kind}")

  # ---------------------------------------------- classify / regress

  def _example_call(self, key: str, method: str, request_input: input_pb2.Input,
                    execute: Executor) -> tuple[Signature, dict[str, np.ndarray], int]:
    sig = self.signature(key)
    if sig.method_name != method:
      kind = "classification" if method == CLASSIFY_METHOD else "regression"
      raise invalid_argument(
          f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
      raise invalid_argument(f"Expected one input Tensor in signature {sig.key}")
    (input_name, spec), = sig.inputs.items()
    if spec.dtype != tf.string.as_datatype_enum:
      raise invalid_argument(
          f"Expected input Tensor of signature {sig.key} to be a string of serialized "
          "tf.Examples")
    examples = serialized_examples(request_input)
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return sig, execute(self, sig.key, {input_name: array}), len(examples)

  def classify(self, key: str, request_input: input_pb2.Input,
               execute: Executor) -> classification_pb2.ClassificationResult:
    sig, out, n = self._example_call(key, CLASSIFY_METHOD, request_input, execute)
    classes, scores = out.get("classes"), out.get("scores")
    if classes is None and scores is None:
      raise invalid_argument(f"Signature {sig.key} has neither 'classes' nor 'scores' outputs")
    for what, a in (("classes", classes), ("scores", scores)):
      if a is not None and (a.ndim != 2 or a.shape[0] != n):
        raise invalid_argument(
            f"Expected Tensor shape: [{n} num_classes] but got {list(a.shape)} for {what}")
    width = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(n):
      row = result.classifications.add()
      for j in range(width):
        cls = row.classes.add()
        if classes is not None:
          cls.label = classes[i, j].decode("utf-8", "replace")
        if scores is not None:
          cls.score = float(scores[i, j])
    return result

  def regress(self, key: str, request_input: input_pb2.Input,
              execute: Executor) -> regression_pb2.RegressionResult:
    sig, out, n = self._example_call(key, REGRESS_METHOD, request_input, execute)
    values = out.get("outputs")
    if values is None:
      raise invalid_argument(f"No 'outputs' Tensor in regression signature {sig.key}")
    if values.shape not in ((n,), (n, 1)):
      raise invalid_argument(
          f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
          f"got {list(values.shape)}")
    result = regression_pb2.RegressionResult()
    for v in values.reshape(n):
      result.regressions.add(value=float(v))
    return result


def serialized_examples(request_input: input_pb2.Input) -> list[bytes]:
  """The serialized tf.Examples of an Input, context features merged in."""
  kind = request_input.WhichOneof("kind")
  if kind == "example_list":
    examples = list(request_input.example_list.examples)
    context = None
  elif kind == "example_list_with_context":
    examples = list(request_input.example_list_with_context.examples)
    context = request_input.example_list_with_context.context
  else:
    raise invalid_argument("Input is empty")
  if not examples:
    raise invalid_argument("Input is empty")
  out = []
  for ex in examples:
    if context is not None:
      merged = example_pb2.Example()
      merged.CopyFrom(context)
      merged.MergeFrom(ex)
      ex = merged
    out.append(ex.SerializeToString())
  return out


def _read_meta_graph(path: Path, tags: Sequence[str]) -> meta_graph_pb2.MetaGraphDef:
  pb = path / "saved_model.pb"
  if not pb.exists():
    raise ServingError(Code.NOT_FOUND,
                       f"Could not find SavedModel .pb or .pbtxt at supplied export "
                       f"directory path: {path}")
  model = saved_model_pb2.SavedModel()
  try:
    model.ParseFromString(pb.read_bytes())
  except Exception as e:  # noqa: BLE001  (protobuf raises DecodeError or others)
    raise ServingError(Code.DATA_LOSS,
                       f"Could not parse {pb}: {e or 'corrupt protobuf'}") from None
  for meta in model.meta_graphs:
    if set(meta.meta_info_def.tags) == set(tags):
      return meta
  available = [sorted(m.meta_info_def.tags) for m in model.meta_graphs]
  raise ServingError(Code.NOT_FOUND,
                     f"Could not find meta graph def matching supplied tags: "
                     f"{{ {' '.join(tags)} }}. Available: {available}")


__all__ = ["CLASSIFY_METHOD", "DEFAULT_SIGNATURE", "Executor", "REGRESS_METHOD", "Servable",
           "Signature", "TensorSpec", "serialized_examples"]
