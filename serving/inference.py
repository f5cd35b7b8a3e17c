"""Predict, Classify, Regress and MultiInference on one loaded servable, as
TF Serving's servables/tensorflow/{predict_util,classifier,regressor,
multi_inference}.cc do them: the SignatureDef only maps aliases to tensor
names; requests are checked for what TF Serving checks (input names, dtypes,
output aliases, signature outputs that fit the API) and nothing more, since
the graph enforces shapes itself.

Every function takes `run`, the Session::Run to use (the batcher's or the
servable's own, from runner.py), so that one place decides how a request executes.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping, Sequence

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, input_pb2, model_pb2,
                                     predict_pb2, regression_pb2)

from serving import tensors
from serving.errors import Code, ServingError, failed_precondition, invalid_argument
from serving.servable import DEFAULT_SIGNATURE, Servable

# (feeds by tensor name, fetched tensor names) -> outputs by tensor name.
Run = Callable[[Mapping[str, np.ndarray], Sequence[str]], Awaitable[dict[str, np.ndarray]]]

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
# TF's cc/saved_model/signature_constants.h: the classify/regress aliases.
CLASSIFY_INPUTS, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"


class Options:
  """Server-wide switches that change request handling (main.cc flags)."""

  def __init__(self, *, method_name_check: bool = False, tensor_content: bool = False):
    self.method_name_check = method_name_check    # --enable_signature_method_name_check
    self.tensor_content = tensor_content          # --enable_serialization_as_tensor_content


def signature_key(name: str) -> str:
  return name or DEFAULT_SIGNATURE


# ------------------------------------------------------------------ predict

async def predict(servable: Servable, request: predict_pb2.PredictRequest, run: Run,
                  options: Options) -> predict_pb2.PredictResponse:
  """predict_util.cc RunPredict."""
  key = signature_key(request.model_spec.signature_name)
  signature = servable.signature_defs.get(key)
  if signature is None:
    raise failed_precondition(f"Serving signature key \"{tensors.clip(key)}\" not found.")
  if options.method_name_check and signature.method_name not in (
      PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
    raise ServingError(
        Code.INTERNAL,
        f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
        f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
  feeds = _predict_feeds(signature, request)
  aliases = _output_aliases(signature, request.output_filter)
  fetches = sorted({signature.outputs[a].name for a in aliases})
  outputs = await run(feeds, fetches)
  response = predict_pb2.PredictResponse()
  _model_spec(response.model_spec, servable, key)
  for alias in aliases:
    response.outputs[alias].CopyFrom(
        tensors.to_proto(outputs[signature.outputs[alias].name], options.tensor_content))
  return response


def _predict_feeds(signature: meta_graph_pb2.SignatureDef,
                   request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
  """predict_util.cc VerifyRequestInputsSize, then GetInputValues (TF's
  cc/saved_model/util.cc): every signature input from the request or the
  signature's defaults; feed dtypes as DirectSession checks them."""
  sent, wanted = set(request.inputs), set(signature.inputs)
  defaults = signature.defaults
  if len(sent) > len(wanted) or (len(sent) < len(wanted) and not defaults) or \
      not sent <= wanted or not wanted - sent <= set(defaults):
    raise invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(wanted)} "
        f"len({{{_names(sent)}}}) != len({{{_names(wanted)}}}). "
        f"Sent extra: {{{_names(sent - wanted)}}}. "
        f"Missing but required: {{{_names(wanted - sent)}}}.")
  feeds = {}
  for index, alias in enumerate(sorted(wanted)):
    info = signature.inputs[alias]
    proto = request.inputs[alias] if alias in sent else defaults[alias]
    value = tensors.to_numpy(proto, alias)
    dtype = tensors.proto_dtype(value)
    if dtype != info.dtype:
      raise invalid_argument(
          f"Expects arg[{index}] to be {tensors.dtype_name(info.dtype)} but "
          f"{tensors.dtype_name(dtype)} is provided")
    feeds[info.name] = value
  return feeds


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
                    ) -> list[str]:
  seen: set[str] = set()
  for alias in output_filter:
    if alias not in signature.outputs:
      raise invalid_argument(
          f"output tensor alias not found in signature: {tensors.clip(alias)} Outputs expected "
          f"to be in the set {{{_names(signature.outputs)}}}.")
    if alias in seen:
      raise invalid_argument(f"duplicate output tensor alias: {tensors.clip(alias)}")
    seen.add(alias)
  return list(output_filter) or sorted(signature.outputs)


def _names(names) -> str:
  return ",".join(tensors.clip(n) for n in sorted(names))


# -------------------------------------------------------- classify / regress

def example_signature(servable: Servable, name: str, method: str, options: Options
                      ) -> tuple[meta_graph_pb2.SignatureDef, str, list[str]]:
  """classifier.cc GetClassificationSignatureDef / regressor.cc
  GetRegressionSignatureDef: any signature whose inputs and outputs fit the
  API serves it, unless --enable_signature_method_name_check. Returns it with
  its input tensor name and output tensor names (`_example_tensors`)."""
  key = signature_key(name)
  signature = servable.signature_defs.get(key)
  if signature is None:
    raise invalid_argument(f"No signature was found with the name: {tensors.clip(key)}")
  kind = "classification" if method == CLASSIFY_METHOD else "regression"
  if options.method_name_check and signature.method_name != method:
    raise invalid_argument(
        f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
  return (signature, *_example_tensors(signature, method))


def _example_tensors(signature: meta_graph_pb2.SignatureDef, method: str
                     ) -> tuple[str, list[str]]:
  """(input tensor name, output tensor names): PreProcessClassification /
  PreProcessRegression."""
  if len(signature.inputs) != 1:
    raise invalid_argument("Expected one input Tensor.")
  if method == CLASSIFY_METHOD:
    if len(signature.outputs) not in (1, 2):
      raise invalid_argument(
          f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
      raise invalid_argument("No classification inputs found in SignatureDef: "
                             f"{_short(signature)}")
    outputs = [signature.outputs[a].name for a in (CLASSIFY_CLASSES, CLASSIFY_SCORES)
               if a in signature.outputs]
    if not outputs:
      raise invalid_argument(
          "Expected classification signature outputs to contain at least one of "
          f"\"{CLASSIFY_CLASSES}\" or \"{CLASSIFY_SCORES}\". Signature was: {_short(signature)}")
    return signature.inputs[CLASSIFY_INPUTS].name, outputs
  if len(signature.outputs) != 1:
    raise invalid_argument("Expected one output Tensor.")
  if REGRESS_INPUTS not in signature.inputs:
    raise invalid_argument(f"No regression inputs found in SignatureDef: {_short(signature)}")
  if REGRESS_OUTPUTS not in signature.outputs:
    raise invalid_argument(f"No regression outputs found in SignatureDef: {_short(signature)}")
  return signature.inputs[REGRESS_INPUTS].name, [signature.outputs[REGRESS_OUTPUTS].name]


def _short(signature: meta_graph_pb2.SignatureDef) -> str:
  return tensors.clip(str(signature).replace("\n", " "), 400)


async def classify(servable: Servable, request: classification_pb2.ClassificationRequest,
                   run: Run, options: Options) -> classification_pb2.ClassificationResponse:
  """classifier.cc RunClassify."""
  signature, input_name, fetches = example_signature(
      servable, request.model_spec.signature_name, CLASSIFY_METHOD, options)
  examples = serialized_examples(request.input)
  outputs = await run({input_name: examples}, sorted(set(fetches)))
  response = classification_pb2.ClassificationResponse()
  _model_spec(response.model_spec, servable, request.model_spec.signature_name)
  response.result.CopyFrom(classification_result(signature, len(examples), outputs))
  return response


async def regress(servable: Servable, request: regression_pb2.RegressionRequest, run: Run,
                  options: Options) -> regression_pb2.RegressionResponse:
  """regressor.cc RunRegress."""
  signature, input_name, fetches = example_signature(
      servable, request.model_spec.signature_name, REGRESS_METHOD, options)
  examples = serialized_examples(request.input)
  outputs = await run({input_name: examples}, fetches)
  response = regression_pb2.RegressionResponse()
  _model_spec(response.model_spec, servable, request.model_spec.signature_name)
  response.result.CopyFrom(regression_result(signature, len(examples), outputs))
  return response


async def multi_inference(servable: Servable, request: inference_pb2.MultiInferenceRequest,
                          run: Run, options: Options) -> inference_pb2.MultiInferenceResponse:
  """multi_inference.cc Infer: one Session::Run feeding the examples to every
  task's input and fetching the union of their outputs."""
  seen: set[str] = set()
  feeds: set[str] = set()
  fetches: set[str] = set()
  plan: list[tuple[inference_pb2.InferenceTask, meta_graph_pb2.SignatureDef]] = []
  for task in request.tasks:
    if not task.model_spec.name:
      raise invalid_argument("Found ModelSpec with an empty model name.")
    if task.model_spec.name != request.tasks[0].model_spec.name:
      raise invalid_argument(
          "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    key = signature_key(task.model_spec.signature_name)
    if key in seen:
      raise invalid_argument(f"Duplicate evaluation of signature: {tensors.clip(key)}")
    seen.add(key)
    signature = servable.signature_defs.get(key)
    if signature is None:
      raise invalid_argument(
          f"Requested signature not found in model graph: {tensors.clip(key)}")
    if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
      raise ServingError(Code.UNIMPLEMENTED,
                         f"Unsupported signature method_name: {tensors.clip(task.method_name)}")
    input_name, outputs = _example_tensors(signature, task.method_name)
    feeds.add(input_name)
    fetches.update(outputs)
    plan.append((task, signature))
  examples = serialized_examples(request.input)
  outputs = await run({name: examples for name in sorted(feeds)}, sorted(fetches))
  response = inference_pb2.MultiInferenceResponse()
  for task, signature in plan:
    result = response.results.add()
    if task.method_name == CLASSIFY_METHOD:
      result.classification_result.CopyFrom(
          classification_result(signature, len(examples), outputs))
    else:
      result.regression_result.CopyFrom(regression_result(signature, len(examples), outputs))
    _model_spec(result.model_spec, servable, task.model_spec.signature_name)
  return response


def classification_result(signature: meta_graph_pb2.SignatureDef, n: int,
                          outputs: Mapping[str, np.ndarray]
                          ) -> classification_pb2.ClassificationResult:
  """classifier.cc PostProcessClassificationResult."""
  classes = _fetched(signature, CLASSIFY_CLASSES, outputs)
  scores = _fetched(signature, CLASSIFY_SCORES, outputs)
  for what, value, dtype in (("classes", classes, types_pb2.DT_STRING),
                             ("scores", scores, types_pb2.DT_FLOAT)):
    if value is None:
      continue
    if value.ndim != 2:
      raise invalid_argument(
          f"Expected Tensor shape: [batch_size num_classes] but got {_shape(value)}")
    if tensors.proto_dtype(value) != dtype:
      raise invalid_argument(f"Expected {what} Tensor of {types_pb2.DataType.Name(dtype)}. "
                             f"Got: {types_pb2.DataType.Name(tensors.proto_dtype(value))}")
    if value.shape[0] != n:
      raise invalid_argument(
          f"Expected {what} output batch size of {n}. Got: {value.shape[0]}")
  if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
    raise invalid_argument("Tensors class and score should match in dim_size(1). Got "
                           f"{classes.shape[1]} vs. {scores.shape[1]}")
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


def regression_result(signature: meta_graph_pb2.SignatureDef, n: int,
                      outputs: Mapping[str, np.ndarray]) -> regression_pb2.RegressionResult:
  """regressor.cc PostProcessRegressionResult."""
  values = _fetched(signature, REGRESS_OUTPUTS, outputs)
  if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
    raise invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                           f"[batch_size, 1] but got {_shape(values)}")
  if values.shape[0] != n:
    raise invalid_argument(
        f"Input batch size did not match output batch size: {n} vs. {values.shape[0]}")
  if values.dtype != np.float32:
    raise invalid_argument("Expected output Tensor of DT_FLOAT.  Got: "
                           f"{types_pb2.DataType.Name(tensors.proto_dtype(values))}")
  result = regression_pb2.RegressionResult()
  for v in values.reshape(n).tolist():
    result.regressions.add(value=v)
  return result


def _fetched(signature: meta_graph_pb2.SignatureDef, alias: str,
             outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
  info = signature.outputs.get(alias)
  return None if info is None else outputs[info.name]


def _shape(value: np.ndarray) -> str:
  return "[" + ",".join(str(d) for d in value.shape) + "]"


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
  """The request's tf.Examples as a string vector; with a context, each is
  the context's bytes followed by the example's, which parses as the merge
  (util.cc InputToSerializedExampleTensor)."""
  kind = request_input.WhichOneof("kind")
  if kind == "example_list":
    examples, context = list(request_input.example_list.examples), None
  elif kind == "example_list_with_context":
    examples = list(request_input.example_list_with_context.examples)
    context = request_input.example_list_with_context.context
  else:
    raise invalid_argument("Input is empty.")
  if not examples:
    raise invalid_argument("Input is empty.")
  prefix = b"" if context is None else context.SerializeToString()
  out = np.empty(len(examples), dtype=object)
  out[:] = [prefix + example.SerializeToString() for example in examples]
  return out


def _model_spec(spec: model_pb2.ModelSpec, servable: Servable, signature: str) -> None:
  """util.cc MakeModelSpec."""
  spec.name = servable.name
  spec.signature_name = signature_key(signature)
  spec.version.value = servable.version


__all__ = ["CLASSIFY_METHOD", "Options", "PREDICT_METHOD", "REGRESS_METHOD", "Run",
           "classify", "multi_inference", "predict", "regress", "serialized_examples"]
