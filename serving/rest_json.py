"""TF Serving's REST JSON <-> its request and response protos.

A port of tensorflow_serving/util/json_tensor.cc (cited as json_tensor.cc
below), rule for rule and message for message, because clients and tools
match on both: predict bodies in row ("instances") and columnar ("inputs")
form become a PredictRequest's TensorProtos, `{"context", "examples"}`
bodies become tf.Examples, and responses are written back the way
json_tensor.cc writes them (floats in their shortest round-trip text,
`_bytes` outputs as `{"b64": ...}`, `{"error": ...}` for failures).

Python's JSON parser recurses and stops at about 1,000 levels, where
rapidjson (iterative) would go on; such documents are refused as parse
errors, and every walk here is bounded by a tensor's 254 dimensions, so no
input reaches a RecursionError.  Values echoed in messages are cut to 256
bytes (json_tensor.cc's kMaxJsonDebugStringBytes).
"""

from __future__ import annotations

import base64
import binascii
import enum
import itertools
import json
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, input_pb2, predict_pb2,
                                     regression_pb2)

from serving.errors import Code, ServingError, invalid_argument
from serving.tensors import clip, dtype_name

_DEBUG_BYTES = 256        # json_tensor.cc: kMaxJsonDebugStringBytes
_MAX_DIMS = 254           # tensorflow/core/framework/tensor_shape.h: MaxDimensions()
_BYTES_SUFFIX = "_bytes"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

InfoMap = Mapping[str, meta_graph_pb2.TensorInfo]


class Format(enum.Enum):
  """json_tensor.h: JsonPredictRequestFormat (kRow / kColumnar)."""
  ROW = "row"
  COLUMNAR = "columnar"


# ------------------------------------------------------------------ parsing

def parse(body: bytes) -> dict:
  """The request's top-level JSON object (json_tensor.cc: ParseJson)."""
  if not body:
    raise invalid_argument("JSON Parse error: The document is empty")
  try:
    doc = json.loads(body.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise invalid_argument(
        f"JSON Parse error: Invalid encoding in string. at offset: {e.start}") from None
  except json.JSONDecodeError as e:
    raise invalid_argument(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
  except RecursionError:
    raise invalid_argument("JSON Parse error: The document is nested too deeply") from None
  except ValueError as e:  # e.g. an integer of more than 4300 digits
    raise invalid_argument(f"JSON Parse error: {clip(str(e))}") from None
  # rapidjson refuses "\ud800" without its pair; Python keeps it as a lone
  # surrogate that no proto string field accepts.
  if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(doc):
    raise invalid_argument("JSON Parse error: The surrogate pair in string is invalid.")
  if not isinstance(doc, dict):
    raise _format_error(doc, "Is not object")
  return doc


def _has_lone_surrogate(doc: Any) -> bool:
  stack = [doc]
  while stack:
    value = stack.pop()
    if isinstance(value, str):
      if _SURROGATE.search(value):
        return True
    elif isinstance(value, list):
      stack.extend(value)
    elif isinstance(value, dict):
      stack.extend(value.keys())
      stack.extend(value.values())
  return False


def signature_name(doc: Mapping[str, Any]) -> str:
  """json_tensor.cc: FillSignature ("" when absent)."""
  name = doc.get("signature_name", "")
  if not isinstance(name, str):
    raise invalid_argument(f"JSON Value: {debug_string(doc)} not formatted correctly. "
                           "'signature_name' key must be a string value.")
  return name


# ------------------------------------------------------------------ predict

def fill_predict_request(doc: Mapping[str, Any], get_inputs: Callable[[str], InfoMap],
                         request: predict_pb2.PredictRequest, *,
                         may_have_bools: bool = True) -> Format:
  """Fills `request`'s signature name and inputs from a parsed body and
  returns its format (json_tensor.cc: FillPredictRequestFromJson).
  `get_inputs(signature_name)` is the signature's input map, as TF Serving's
  GetInfoMap looks it up on the servable. numpy quietly reads JSON `true`
  as 1 among numbers, so unless the caller knows the body has no booleans
  (`may_have_bools=False`: no "true"/"false" in its bytes), numeric inputs
  are checked leaf by leaf, which is slower on large bodies."""
  request.model_spec.signature_name = signature_name(doc)
  name = request.model_spec.signature_name
  infos = get_inputs(name)
  if not infos:
    raise invalid_argument(
        f"Failed to get input map for signature: {clip(name) if name else 'DEFAULT'}")
  dtypes = {key: infos[key].dtype for key in sorted(infos)}
  if "instances" in doc:
    if "inputs" in doc:
      raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or "
                          "'instances' keys to exist ")
    instances = doc["instances"]
    if not isinstance(instances, list):
      raise _format_error(doc, "Expecting 'instances' to be an list/array")
    if not instances:
      raise _format_error(doc, "No values in 'instances' array")
    arrays = _from_instances(instances, dtypes, may_have_bools)
    fmt = Format.ROW
  elif "inputs" in doc:
    arrays = _from_inputs(doc["inputs"], dtypes, may_have_bools)
    fmt = Format.COLUMNAR
  else:
    raise invalid_argument("Missing 'inputs' or 'instances' key")
  for key, array in arrays.items():
    request.inputs[key].CopyFrom(_tensor_proto(array, dtypes[key]))
  return fmt


def _is_b64(value: Any) -> bool:
  return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value: Any) -> bool:
  """An object of named tensors, as opposed to a {"b64": ...} value."""
  return isinstance(value, dict) and not _is_b64(value)


def _from_instances(instances: list, dtypes: Mapping[str, int],
                    may_have_bools: bool) -> dict[str, np.ndarray]:
  """json_tensor.cc: FillTensorMapFromInstancesList. Every element must
  give a tensor of the first one's shape; they are stacked on a new batch
  dimension."""
  names = list(dtypes)
  if not isinstance(instances[0], dict) and len(names) > 1:
    raise invalid_argument("instances is a plain list, but expecting list of objects as "
                           "multiple input tensors required as per tensorinfo_map")
  if _is_named(instances[0]):
    columns = {n: [item.get(n) if isinstance(item, dict) else None for item in instances]
               for n in names}
    if all(_is_named(item) and item.keys() == dtypes.keys() for item in instances):
      fast = {n: _fast_array(columns[n], dtypes[n], may_have_bools) for n in names}
      if all(a is not None for a in fast.values()):
        return fast  # type: ignore[return-value]
    _check_named_instances(instances, dtypes)
    return {n: _build(columns[n], dtypes[n]) for n in names}
  name = names[0]
  array = _fast_array(instances, dtypes[name], may_have_bools)
  if array is None:
    _check_plain_instances(instances, dtypes[name])
    array = _build(instances, dtypes[name])
  return {name: array}


def _check_plain_instances(instances: list, dtype: int) -> None:
  first = None
  for i, item in enumerate(instances):
    if _is_named(item):
      raise invalid_argument(
          f"Expecting value/list but got object at item {i} of input list")
    try:
      first = _same_as_first(first, *_check_value(item, dtype))
    except ServingError as e:
      raise invalid_argument(f"Failed to process element: {i} of 'instances' list. "
                             f"Error: {_status_text(e)}") from None


def _check_named_instances(instances: list, dtypes: Mapping[str, int]) -> None:
  """The per-element checks of the named form, in json_tensor.cc's order."""
  firsts: dict[str, tuple[list[int], int]] = {}
  for i, item in enumerate(instances):
    if not _is_named(item):
      raise invalid_argument(f"Expecting object but got list at item {i} of input list")
    for key, value in item.items():
      try:
        if key not in dtypes:
          raise invalid_argument(f"JSON object: does not have named input: {clip(key)}")
        firsts[key] = _same_as_first(firsts.get(key), *_check_value(value, dtypes[key]))
      except ServingError as e:
        raise invalid_argument(f"Failed to process element: {i} key: {clip(key)} of "
                               f"'instances' list. Error: {_status_text(e)}") from None
    if item.keys() != dtypes.keys():
      raise invalid_argument(
          f"Failed to process element: {i} of 'instances' list. JSON object: "
          f"{debug_string(item)} keys must be equal to: {','.join(dtypes)}")


def _same_as_first(first: tuple[list[int], int] | None, shape: list[int],
                   size: int) -> tuple[list[int], int]:
  """json_tensor.cc: AddInstanceItem's checks against the first element."""
  if first is None:
    return shape, size
  if first[1] != size:
    raise invalid_argument(f"Expecting tensor size: {first[1]} but got: {size}")
  if first[0] != shape:
    raise invalid_argument(f"Expecting shape {_shape_text(first[0])} but got: "
                           f"{_shape_text(shape)}")
  return first


def _from_inputs(value: Any, dtypes: Mapping[str, int],
                 may_have_bools: bool) -> dict[str, np.ndarray]:
  """json_tensor.cc: FillTensorMapFromInputsMap. Keys of an "inputs" object
  that the signature does not take are ignored, as there."""
  names = list(dtypes)
  if not _is_named(value):
    if len(names) > 1:
      raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                             "multiple input tensors required as per tensorinfo_map")
    return {names[0]: _tensor_value(value, dtypes[names[0]], may_have_bools)}
  out = {}
  for name in names:
    if name not in value:
      raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
    out[name] = _tensor_value(value[name], dtypes[name], may_have_bools)
  return out


def _tensor_value(value: Any, dtype: int, may_have_bools: bool) -> np.ndarray:
  array = _fast_array(value, dtype, may_have_bools)
  if array is not None:
    return array
  _check_value(value, dtype)
  return _build(value, dtype)


# ---------------------------------------------------- JSON values -> arrays

_NUMERIC = {  # DataType -> (numpy dtype, accepted numpy kinds, value range)
    types_pb2.DT_FLOAT: (np.float32, "iuf", None),
    types_pb2.DT_DOUBLE: (np.float64, "iuf", None),
    types_pb2.DT_INT32: (np.int32, "iu", (-2**31, 2**31 - 1)),
    types_pb2.DT_INT16: (np.int16, "iu", (-2**31, 2**31 - 1)),
    types_pb2.DT_INT8: (np.int8, "iu", (-2**31, 2**31 - 1)),
    types_pb2.DT_UINT8: (np.uint8, "iu", (-2**31, 2**31 - 1)),
    types_pb2.DT_INT64: (np.int64, "iu", (-2**63, 2**63 - 1)),
    types_pb2.DT_UINT32: (np.uint32, "iu", (0, 2**32 - 1)),
    types_pb2.DT_UINT64: (np.uint64, "iu", (0, 2**64 - 1)),
    types_pb2.DT_BOOL: (np.bool_, "b", None),
}


def _fast_array(value: Any, dtype: int, may_have_bools: bool) -> np.ndarray | None:
  """`value` as an array when numpy reads it as is and the result is exactly
  what the leaf-by-leaf checks would accept; None sends the caller to those
  checks (for the precise error, or for strings and possible booleans)."""
  spec = _NUMERIC.get(dtype)
  if spec is None:
    return None
  target, kinds, bounds = spec
  if kinds != "b" and may_have_bools:
    return None
  try:
    array = np.array(value)
  except (ValueError, OverflowError):
    return None
  if array.dtype.kind not in kinds or list(array.shape) != _shape(value):
    return None
  if bounds is not None and array.size and (
      int(array.min()) < bounds[0] or int(array.max()) > bounds[1]):
    return None
  # C++ narrows int_val to the tensor's type (uint8 300 -> 44); astype does too.
  return array.astype(target, copy=False)


def _shape(value: Any) -> list[int]:
  """json_tensor.cc: GetDenseTensorShape (the first element's sizes)."""
  shape = []
  while isinstance(value, list):
    shape.append(len(value))
    if len(shape) > _MAX_DIMS:
      raise invalid_argument(f"JSON Value: {debug_string(value)} nests lists deeper than "
                             f"a tensor's {_MAX_DIMS} dimensions")
    if not value:
      break
    value = value[0]
  return shape


def _check_value(value: Any, dtype: int) -> tuple[list[int], int]:
  """(shape, number of values) of a dense tensor, or json_tensor.cc's
  FillTensorProto error for the first leaf or list that does not fit."""
  shape = _shape(value)
  count = 0
  rank = len(shape)
  stack: list[tuple[Any, int]] = [(value, 0)]
  while stack:
    item, level = stack.pop()
    if not isinstance(item, list):
      if level != rank:
        raise invalid_argument(f"JSON Value: {debug_string(item)} found at incorrect level: "
                               f"{level + 1} in the JSON DOM. Expected at level: {rank}")
      _check_leaf(item, dtype)
      count += 1
      continue
    if level >= rank:
      raise invalid_argument(
          f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(item) != shape[level]:
      raise invalid_argument(f"Encountered list at unexpected size: {len(item)} at level: "
                             f"{level} expected size: {shape[level]}")
    stack.extend((v, level + 1) for v in reversed(item))
  return shape, count


def _check_leaf(value: Any, dtype: int) -> None:
  """json_tensor.cc: AddValueToTensor's type checks."""
  if dtype == types_pb2.DT_STRING:
    if isinstance(value, dict):
      _decode_b64(value)
    elif not isinstance(value, str):
      raise _type_error(value, dtype)
    return
  spec = _NUMERIC.get(dtype)
  if spec is None:
    raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {debug_string(value)} "
                       f"to type: {dtype_name(dtype)}")
  _, kinds, bounds = spec
  if kinds == "b":
    ok = isinstance(value, bool)
  elif isinstance(value, bool) or not isinstance(value, (int, float)):
    ok = False
  elif kinds == "iuf":
    if isinstance(value, int) and abs(value) >= 2**1024:
      raise invalid_argument(  # rapidjson cannot even parse it
          f"JSON Value: {debug_string(value)} Number too big to be stored in double.")
    ok = True
  else:
    ok = isinstance(value, int) and bounds[0] <= value <= bounds[1]
  if not ok:
    raise _type_error(value, dtype)


def _build(value: Any, dtype: int) -> np.ndarray:
  """The array of an already checked value."""
  if dtype == types_pb2.DT_STRING:
    shape = _shape(value)
    leaves: list[bytes] = []
    stack = [value]
    while stack:
      item = stack.pop()
      if isinstance(item, list):
        stack.extend(reversed(item))
      else:
        leaves.append(_decode_b64(item) if isinstance(item, dict) else item.encode("utf-8"))
    array = np.empty(len(leaves), dtype=object)
    array[:] = leaves
    return array.reshape(shape)
  target, kinds, _ = _NUMERIC[dtype]
  wide = {"iuf": np.float64, "b": np.bool_}.get(kinds, np.uint64 if target == np.uint64
                                              else np.int64)
  return np.array(value, dtype=wide).astype(target, copy=False)


def _decode_b64(value: Any) -> bytes:
  """json_tensor.cc: JsonDecodeBase64Object. absl::Base64Unescape takes
  the standard alphabet with or without padding."""
  if not _is_b64(value):
    raise invalid_argument(
        f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
  text = value["b64"]
  try:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
  except (binascii.Error, ValueError):
    raise invalid_argument("Unable to base64 decode") from None


def _tensor_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
  proto = tensor_pb2.TensorProto(dtype=dtype)
  proto.tensor_shape.dim.extend(
      tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape)
  if dtype == types_pb2.DT_STRING:
    proto.string_val.extend(array.ravel().tolist())
  else:
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
  return proto


# --------------------------------------------------- classify and regress

def fill_example_request(doc: Mapping[str, Any],
                         request: classification_pb2.ClassificationRequest
                         | regression_pb2.RegressionRequest) -> None:
  """json_tensor.cc: FillClassifyRegressRequestFromJson (its "When method
  is classify" text is TF Serving's for regress too)."""
  request.model_spec.signature_name = signature_name(doc)
  request_input: input_pb2.Input = request.input
  has_context = "context" in doc
  if has_context:
    _fill_example(doc["context"], request_input.example_list_with_context.context)
  if "examples" not in doc:
    raise _format_error(doc, "When method is classify, key 'examples' is expected and was "
                        "not found")
  examples = doc["examples"]
  if not isinstance(examples, list):
    raise _format_error(doc, "Expecting 'examples' value to be an list/array")
  if not examples:
    raise _format_error(doc, "'examples' value is an empty array")
  target = (request_input.example_list_with_context.examples if has_context
            else request_input.example_list.examples)
  for value in examples:
    _fill_example(value, target.add())


def _fill_example(value: Any, example: example_pb2.Example) -> None:
  """json_tensor.cc: MakeExampleFromJsonObject."""
  if not isinstance(value, dict):
    raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
  for name, content in value.items():
    feature = feature_pb2.Feature()
    for item in content if isinstance(content, list) else [content]:
      _add_feature_value(item, name, feature)
    example.features.feature[name].CopyFrom(feature)


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
  """json_tensor.cc: AddValueToFeature."""
  def need(kind: str) -> None:
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
      expected = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[current]
      raise invalid_argument(
          f"Unexpected element type in feature: {clip(name)} expecting type: {expected}")

  if isinstance(value, bool):
    need("int64_list")
    feature.int64_list.value.append(int(value))
  elif isinstance(value, int) and value < 2**64:  # larger: rapidjson keeps a double
    need("int64_list")
    if value >= 2**63:
      raise invalid_argument(
          f"Feature: {clip(name)} has uint64_t element. Only int64_t is supported.")
    feature.int64_list.value.append(value)
  elif isinstance(value, (int, float)):
    need("float_list")
    if isinstance(value, int) and value >= 2**1024:
      raise invalid_argument(
          f"Feature: {clip(name)} has a number too big to be stored in double.")
    feature.float_list.value.append(float(value))
  elif isinstance(value, str):
    need("bytes_list")
    feature.bytes_list.value.append(value.encode("utf-8"))
  elif _is_b64(value):
    need("bytes_list")
    feature.bytes_list.value.append(_decode_b64(value))
  else:
    raise invalid_argument(f"Feature: {clip(name)} has element with unexpected JSON "
                           f"type: {json_type(value)}")


# ------------------------------------------------------------------ writing

def predict_response(response: predict_pb2.PredictResponse, fmt: Format) -> bytes:
  """json_tensor.cc: MakeJsonFromTensors."""
  if not response.outputs:
    raise invalid_argument("Cannot convert empty tensor map to JSON")
  names = sorted(response.outputs)
  arrays = {n: tf.make_ndarray(response.outputs[n]) for n in names}
  dtypes = {n: response.outputs[n].dtype for n in names}
  many = len(names) > 1
  if fmt is Format.COLUMNAR:
    texts = {n: _values_text(n, arrays[n], dtypes[n]) for n in names}
    body = _object(texts) if many else texts[names[0]]
    return b'{"outputs":' + body.encode() + b"}"
  batch = -1
  for n in names:
    if arrays[n].ndim == 0:
      raise invalid_argument(f"Tensor name: {n} has no shape information ")
    size = arrays[n].shape[0]
    if batch >= 0 and size != batch:
      raise invalid_argument(
          f"Tensor name: {n} has inconsistent batch size: {size} expecting: {batch}")
    batch = size
  rows = {n: [_values_text(n, arrays[n][i, ...], dtypes[n]) for i in range(batch)]
          for n in names}
  items = [_object({n: rows[n][i] for n in names}) if many else rows[names[0]][i]
           for i in range(batch)]
  return b'{"predictions":[' + ",".join(items).encode() + b"]}"


def classification_response(result: classification_pb2.ClassificationResult) -> bytes:
  """json_tensor.cc: MakeJsonFromClassificationResult."""
  if not result.classifications:
    raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
  rows = []
  for classifications in result.classifications:
    scores = _decimals(np.array([c.score for c in classifications.classes], np.float32))
    rows.append("[" + ",".join(f"[{json.dumps(c.label)},{s}]" for c, s in
                               zip(classifications.classes, scores)) + "]")
  return b'{"results":[' + ",".join(rows).encode() + b"]}"


def regression_response(result: regression_pb2.RegressionResult) -> bytes:
  """json_tensor.cc: MakeJsonFromRegressionResult."""
  if not result.regressions:
    raise invalid_argument("Cannot convert empty RegressionResults to JSON")
  values = _decimals(np.array([r.value for r in result.regressions], np.float32))
  return b'{"results":[' + ",".join(values).encode() + b"]}"


def status_response(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
  """http_rest_api_util.cc: ToJsonString (the proto's JSON names)."""
  return json.dumps(json_format.MessageToDict(
      response, always_print_fields_with_no_presence=True), indent=1).encode()


def metadata_response(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
  """http_rest_api_util.cc: ToJsonString: the model spec and the unpacked
  SignatureDefMap with proto field names."""
  signatures = get_model_metadata_pb2.SignatureDefMap()
  if not response.metadata["signature_def"].Unpack(signatures):
    raise ServingError(Code.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'.")
  doc = {"model_spec": _message_dict(response.model_spec),
         "metadata": {"signature_def": _message_dict(signatures)}}
  return json.dumps(doc, indent=1).encode()


def _message_dict(message) -> dict:
  return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                   preserving_proto_field_name=True)


def error_response(message: str) -> bytes:
  """json_tensor.cc: MakeJsonFromStatus."""
  return json.dumps({"error": message}).encode()


def _object(texts: Mapping[str, str]) -> str:
  return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in texts.items()) + "}"


def _values_text(name: str, array: np.ndarray, dtype: int) -> str:
  """json_tensor.cc: AddTensorValues: nested lists of one tensor's values,
  for the types AddSingleValueAndAdvance writes."""
  flat = array.ravel()
  if dtype == types_pb2.DT_STRING:
    if name.endswith(_BYTES_SUFFIX):
      leaves = [f'{{"b64":"{base64.b64encode(v).decode()}"}}' for v in flat.tolist()]
    else:
      leaves = [json.dumps(v.decode("utf-8", "replace")) for v in flat.tolist()]
  elif dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
    leaves = _decimals(flat)
  elif dtype == types_pb2.DT_BOOL:
    leaves = ["true" if v else "false" for v in flat.tolist()]
  elif dtype in _NUMERIC:
    leaves = [str(v) for v in flat.tolist()]
  else:
    raise invalid_argument(f"Failed to write JSON value for tensor type: {dtype_name(dtype)}")
  return _nest(np.array(leaves, dtype=object).reshape(array.shape))


def _nest(leaves: np.ndarray) -> str:
  if leaves.ndim == 0:
    return leaves.item()
  if leaves.ndim == 1:
    return "[" + ",".join(leaves.tolist()) + "]"
  return "[" + ",".join(_nest(sub) for sub in leaves) + "]"


def _decimals(values: np.ndarray) -> list[str]:
  """json_tensor.cc: WriteDecimal: "%g" with 6 digits, or max_digits10 when
  that does not read back as the same value; whole numbers get ".0", so a
  float output never looks like an int; NaN and Infinity as rapidjson
  writes them."""
  digits = 9 if values.dtype == np.float32 else 17
  floats = values.tolist()
  texts = ["%.6g" % v for v in floats]
  back = np.array(texts).astype(values.dtype) if texts else values
  for i in np.flatnonzero((back != values) & ~np.isnan(values)):
    texts[i] = "%.*g" % (digits, floats[i])
  for i, text in enumerate(texts):
    if "." in text or "e" in text:
      continue
    if text in ("nan", "-nan"):
      texts[i] = "NaN"
    elif text in ("inf", "-inf"):
      texts[i] = "Infinity" if text == "inf" else "-Infinity"
    else:
      texts[i] = text + ".0"
  return texts


# ------------------------------------------------------------ error texts

def debug_string(value: Any, limit: int = _DEBUG_BYTES) -> str:
  """json_tensor.cc: JsonValueToDebugString: compact JSON cut at `limit`
  characters, written without recursion (the value may be deeply nested)."""
  parts: list[str] = []
  size = 0
  for token in _tokens(value):
    parts.append(token)
    size += len(token)
    if size >= limit:
      return "".join(parts)[:limit] + "..."
  return "".join(parts)


def _tokens(value: Any) -> Iterator[str]:
  stack: list[Any] = [value]
  while stack:
    item = stack.pop()
    if isinstance(item, _Raw):
      yield item.text
    elif isinstance(item, list):
      yield "["
      stack.append(_Raw("]"))
      stack.extend(_separated(item, lambda v: v))
    elif isinstance(item, dict):
      yield "{"
      stack.append(_Raw("}"))
      stack.extend(_separated(item.items(), lambda kv: _Pair(*kv)))
    elif isinstance(item, _Pair):
      yield json.dumps(item.key[:_DEBUG_BYTES]) + ":"
      stack.append(item.value)
    elif isinstance(item, str):
      yield json.dumps(item[:_DEBUG_BYTES])
    else:
      yield json.dumps(item)


def _separated(items: Iterable[Any], wrap: Callable[[Any], Any]) -> list[Any]:
  """`items` reversed for a stack, with "," between them. Only the first
  few matter for a cut string, so long lists are not copied whole."""
  head = list(itertools.islice(items, _DEBUG_BYTES))
  out: list[Any] = []
  for i, item in enumerate(reversed(head)):
    out.append(wrap(item))
    if i < len(head) - 1:
      out.append(_Raw(","))
  return out


class _Raw:
  __slots__ = ("text",)

  def __init__(self, text: str):
    self.text = text


class _Pair:
  __slots__ = ("key", "value")

  def __init__(self, key: str, value: Any):
    self.key, self.value = key, value


def json_type(value: Any) -> str:
  """json_tensor.cc: JsonTypeString."""
  if value is None:
    return "Null"
  if isinstance(value, bool):
    return "True" if value else "False"
  return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value: Any, dtype: int) -> ServingError:
  return invalid_argument(f"JSON Value: {debug_string(value)} Type: {json_type(value)} is "
                          f"not of expected type: {dtype_name(dtype)}")


def _format_error(value: Any, message: str) -> ServingError:
  return invalid_argument(f"JSON Value: {debug_string(value)} {message}")


def _status_text(error: ServingError) -> str:
  """absl::Status::ToString(), as json_tensor.cc nests it in row errors."""
  return f"{error.code_name}: {error.message}"


def _shape_text(shape: list[int]) -> str:
  return "[" + ",".join(map(str, shape)) + "]"


__all__ = ["Format", "classification_response", "debug_string", "error_response",
           "fill_example_request", "fill_predict_request", "metadata_response", "parse",
           "predict_response", "regression_response", "signature_name", "status_response"]
