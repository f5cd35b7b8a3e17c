"""Tensors on the wire <-> numpy: TensorProto (gRPC) and JSON (REST).

Requests are decoded without detours (`np.frombuffer` on `tensor_content`,
`tf.make_ndarray` only for the typed repeated fields); responses are written
into the typed fields (`float_val`, ...) as TF Serving does, so clients that
read `outputs[k].float_val` directly keep working.  The JSON rules and error
texts follow TF Serving's util/json_tensor.cc: row ("instances") and columnar
("inputs") formats, `{"b64": ...}` for binary strings, outputs whose name ends
in `_bytes` written back as base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import invalid_argument

_BYTES_SUFFIX = "_bytes"
_TF_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def _has_numpy(dtype: int) -> bool:
  try:
    np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)
  except (TypeError, ValueError):
    return False
  return True


def dtype_name(dtype: int) -> str:
  """TF's DataTypeString: "float", "uint8", "string", ..."""
  try:
    name = tf.dtypes.as_dtype(dtype).name
  except TypeError:
    return f"<invalid dtype {dtype}>"
  return _TF_NAMES.get(name, name)


# The dtypes a request tensor can carry: those with a numpy equivalent.
_SUPPORTED = frozenset(
    d for d in types_pb2.DataType.values()
    if d not in (types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT)
    and d < 100 and _has_numpy(d))


def numpy_dtype(dtype: int) -> np.dtype:
  return np.dtype(object) if dtype == types_pb2.DT_STRING else np.dtype(
      tf.dtypes.as_dtype(dtype).as_numpy_dtype)


def proto_dtype(array: np.ndarray) -> int:
  if array.dtype.kind in "OSU":
    return types_pb2.DT_STRING
  return tf.dtypes.as_dtype(array.dtype).as_datatype_enum


# ---------------------------------------------------------------- TensorProto

def clip(text: str, limit: int = 200) -> str:
  """A client-chosen name as it may appear in a message: at most `limit`
  characters, so a megabyte signature name is not echoed back (gRPC's
  trailer limit would turn that into RESOURCE_EXHAUSTED)."""
  return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _memory_bytes() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def to_numpy(proto: tensor_pb2.TensorProto, name: str = "") -> np.ndarray:
  """The array a TensorProto holds, as TF's Tensor::FromProto reads it; a
  proto it would reject is INVALID_ARGUMENT "tensor parsing error" (TF's
  cc/saved_model/util.cc GetInputValues), including shapes whose values
  could not be allocated (TF's allocator fails those; here they would be a
  MemoryError or the OOM killer)."""
  error = invalid_argument(f"tensor parsing error: {clip(name)}")
  if proto.dtype not in _SUPPORTED or proto.tensor_shape.unknown_rank:
    raise error
  shape = [d.size for d in proto.tensor_shape.dim]
  if any(s < 0 for s in shape):
    raise error
  count = math.prod(shape)
  dtype = numpy_dtype(proto.dtype)
  if count >= 2**63 or count * max(dtype.itemsize, 8) > _memory_bytes():
    raise error
  if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
    if len(proto.tensor_content) != count * dtype.itemsize:
      raise error
    return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
  try:
    return tf.make_ndarray(proto)
  except (TypeError, ValueError):
    raise error from None


def to_proto(array: np.ndarray, tensor_content: bool = False) -> tensor_pb2.TensorProto:
  """A TensorProto with the values in the typed field (TF's AsProtoField),
  or, with `tensor_content` (--enable_serialization_as_tensor_content), in
  raw bytes as AsProtoTensorContent writes them (strings stay in
  string_val)."""
  array = np.asarray(array)
  proto = tensor_pb2.TensorProto(dtype=proto_dtype(array))
  proto.tensor_shape.dim.extend(
      tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape)
  flat = array.ravel()
  kind = array.dtype
  if proto.dtype == types_pb2.DT_STRING:
    proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
  elif tensor_content:
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
  elif kind == np.float32:
    proto.float_val.extend(flat.tolist())
  elif kind == np.float64:
    proto.double_val.extend(flat.tolist())
  elif kind in (np.int32, np.int16, np.int8, np.uint8, np.uint16):
    proto.int_val.extend(flat.tolist())
  elif kind == np.int64:
    proto.int64_val.extend(flat.tolist())
  elif kind == np.bool_:
    proto.bool_val.extend(flat.tolist())
  elif kind == np.uint32:
    proto.uint32_val.extend(flat.tolist())
  elif kind == np.uint64:
    proto.uint64_val.extend(flat.tolist())
  else:
    return tf.make_tensor_proto(array)
  return proto


# ----------------------------------------------------------------------- JSON

def parse_json(body: bytes) -> dict:
  if not body.strip():
    raise invalid_argument("JSON Parse error: The document is empty")
  try:
    doc = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    msg, pos = (e.msg, e.pos) if isinstance(e, json.JSONDecodeError) else (str(e), e.start)
    raise invalid_argument(f"JSON Parse error: {msg} at offset: {pos}") from None
  if not isinstance(doc, dict):
    raise invalid_argument(f"JSON Value: {short_json(doc)} Is not object")
  return doc


def signature_name(doc: Mapping[str, Any]) -> str:
  name = doc.get("signature_name", "")
  if not isinstance(name, str):
    raise invalid_argument(
        f"JSON Value: {short_json(doc)} not formatted correctly. 'signature_name' key must "
        "be a string value.")
  return name


def json_to_inputs(doc: Mapping[str, Any], specs: Mapping[str, int], *,
                   may_have_bools: bool = True) -> tuple[dict[str, np.ndarray], str]:
  """The input arrays of a REST predict body, and its format ("row" or
  "columnar"); `specs` maps each signature input to its DataType.

  numpy silently turns `true` into 1 inside a list of numbers, so unless the
  caller knows the body has no JSON booleans (`may_have_bools=False`), every
  numeric leaf is type-checked in Python first (slower on big bodies)."""
  if not specs:
    raise invalid_argument("Failed to get input map for signature")
  has_instances, has_inputs = "instances" in doc, "inputs" in doc
  if has_instances and has_inputs:
    raise invalid_argument(
        f"JSON Value: {short_json(doc)} Not formatted correctly expecting only one of 'inputs' "
        "or 'instances' keys to exist ")
  if has_instances:
    instances = doc["instances"]
    if not isinstance(instances, list):
      raise invalid_argument(
          f"JSON Value: {short_json(doc)} Excepting 'instances' to be an list/array")
    if not instances:
      raise invalid_argument(f"JSON Value: {short_json(doc)} No values in 'instances' array")
    return _from_instances(instances, specs, may_have_bools), "row"
  if has_inputs:
    return _from_columns(doc["inputs"], specs, may_have_bools), "columnar"
  raise invalid_argument("Missing 'inputs' or 'instances' key")


def is_b64(value: Any) -> bool:
  return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value: Any) -> bool:
  return isinstance(value, dict) and not is_b64(value)


def _from_instances(instances: list, specs: Mapping[str, int],
                    may_have_bools: bool) -> dict[str, np.ndarray]:
  names = sorted(specs)
  if not _is_named(instances[0]) and len(names) > 1:
    raise invalid_argument(
        "instances is a plain list, but expecting list of objects as multiple input "
        "tensors required as per tensorinfo_map")
  named = _is_named(instances[0])
  columns: dict[str, list] = {n: [] for n in names}
  for i, item in enumerate(instances):
    if named:
      if not _is_named(item):
        raise invalid_argument(f"Expecting object but got list at item {i} of input list")
      if sorted(item) != names:
        unknown = sorted(set(item) - set(names))
        if unknown:
          raise invalid_argument(
              f"Failed to process element: {i} key: {unknown[0]} of 'instances' list. "
              f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {unknown[0]}")
        raise invalid_argument(
            f"Failed to process element: {i} of 'instances' list. JSON object: "
            f"{short_json(item)} must only have keys: {','.join(names)}")
      for n in names:
        columns[n].append(item[n])
    else:
      if _is_named(item):
        raise invalid_argument(f"Expecting value/list but got object at item {i} of input list")
      columns[names[0]].append(item)
  return {n: _to_array(columns[n], specs[n], n, may_have_bools) for n in names}


def _from_columns(value: Any, specs: Mapping[str, int],
                  may_have_bools: bool) -> dict[str, np.ndarray]:
  names = sorted(specs)
  if not _is_named(value):
    if len(names) > 1:
      raise invalid_argument(
          "inputs is a plain value/list, but expecting an object as multiple input tensors "
          "required as per tensorinfo_map")
    return {names[0]: _to_array(value, specs[names[0]], names[0], may_have_bools)}
  for n in names:
    if n not in value:
      raise invalid_argument(f"Missing named input: {n} in 'inputs' object.")
  extra = sorted(set(value) - set(names))
  if extra:
    raise invalid_argument(
        f"JSON object: does not have named input: {extra[0]} (the signature takes: "
        f"{','.join(names)})")
  return {n: _to_array(value[n], specs[n], n, may_have_bools) for n in names}


def _to_array(value: Any, dtype: int, name: str, may_have_bools: bool) -> np.ndarray:
  """A dense array of `dtype` from nested JSON lists, checked as TF Serving
  checks them: rectangular, every leaf of the right JSON type."""
  shape = _shape(value)
  if dtype == types_pb2.DT_STRING:
    leaves: list[bytes] = []
    _collect_strings(value, 0, shape, leaves, name)
    out = np.empty(len(leaves), dtype=object)
    out[:] = leaves
    return out.reshape(shape)
  target = numpy_dtype(dtype)
  if may_have_bools and target.kind != "b":
    _check_leaves(value, 0, shape, dtype, name)
  try:
    array = np.array(value)
  except ValueError:
    array = None
  if array is not None and array.shape == tuple(shape) and _kind_ok(array.dtype.kind, target):
    if target.kind in "iu":
      info = np.iinfo(target)
      if array.size and (array.min() < info.min or array.max() > info.max):
        bad = array[(array < info.min) | (array > info.max)].ravel()[0]
        raise invalid_argument(
            f"JSON Value: {bad} is out of range for input '{name}' of type {dtype_name(dtype)}")
    return array.astype(target, copy=False)
  _check_leaves(value, 0, shape, dtype, name)   # raises the precise error
  raise invalid_argument(f"JSON value for input '{name}' is not a dense {dtype_name(dtype)} tensor")


def _kind_ok(kind: str, target: np.dtype) -> bool:
  if target.kind == "f":
    return kind in "iuf"
  if target.kind in "iu":
    return kind in "iu"
  if target.kind == "b":
    return kind == "b"
  return False


def _shape(value: Any) -> list[int]:
  shape = []
  while isinstance(value, list):
    shape.append(len(value))
    if not value:
      break
    value = value[0]
  return shape


def _check_level(value: Any, level: int, shape: list[int]) -> None:
  if not isinstance(value, list):
    if level != len(shape):
      raise invalid_argument(
          f"JSON Value: {short_json(value)} found at incorrect level: {level + 1} in the JSON "
          f"DOM. Expected at level: {len(shape)}")
    return
  if level >= len(shape):
    raise invalid_argument(
        f"Encountered list at unexpected level: {level} expected < {len(shape)}")
  if len(value) != shape[level]:
    raise invalid_argument(
        f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
        f"size: {shape[level]}")


def _check_leaves(value: Any, level: int, shape: list[int], dtype: int, name: str) -> None:
  _check_level(value, level, shape)
  if isinstance(value, list):
    for v in value:
      _check_leaves(v, level + 1, shape, dtype, name)
    return
  kind = numpy_dtype(dtype).kind
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind == "f" else
        isinstance(value, int) and not isinstance(value, bool) if kind in "iu" else
        isinstance(value, bool) if kind == "b" else False)
  if not ok:
    raise invalid_argument(
        f"JSON Value: {short_json(value)} Type: {json_type(value)} is not of expected type: "
        f"{dtype_name(dtype)}")


def _collect_strings(value: Any, level: int, shape: list[int], out: list[bytes],
                     name: str) -> None:
  _check_level(value, level, shape)
  if isinstance(value, list):
    for v in value:
      _collect_strings(v, level + 1, shape, out, name)
  elif isinstance(value, str):
    out.append(value.encode("utf-8"))
  elif isinstance(value, dict):
    out.append(decode_b64(value))
  else:
    raise invalid_argument(
        f"JSON Value: {short_json(value)} Type: {json_type(value)} is not of expected type: string")


def decode_b64(value: Any) -> bytes:
  """The bytes of a {"b64": "..."} object."""
  if not is_b64(value):
    raise invalid_argument(f"JSON Value: {short_json(value)} not formatted correctly for "
                           "base64 data")
  try:
    return base64.b64decode(value["b64"], validate=True)
  except (binascii.Error, ValueError):
    raise invalid_argument("Unable to base64 decode") from None


def json_type(value: Any) -> str:
  if value is None:
    return "Null"
  if isinstance(value, bool):
    return "True" if value else "False"
  return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def short_json(value: Any, limit: int = 200) -> str:
  text = json.dumps(value, separators=(",", ":"), default=str)
  return text if len(text) <= limit else text[:limit] + "..."


def _json_values(name: str, array: np.ndarray) -> Any:
  if array.dtype.kind in "OSU":
    if name.endswith(_BYTES_SUFFIX):
      enc = [{"b64": base64.b64encode(v).decode("ascii")} for v in array.ravel()]
    else:
      enc = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
             for v in array.ravel()]
    out = np.empty(len(enc), dtype=object)
    out[:] = enc
    return out.reshape(array.shape).tolist()
  if array.dtype.kind == "f":
    return array.astype(np.float64).tolist()
  return array.tolist()


def outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: str) -> dict:
  """TF Serving's predict response body for the request's format."""
  if not outputs:
    raise invalid_argument("Cannot convert empty tensor map to JSON")
  names = sorted(outputs)
  if fmt == "columnar":
    if len(names) == 1:
      return {"outputs": _json_values(names[0], outputs[names[0]])}
    return {"outputs": {n: _json_values(n, outputs[n]) for n in names}}
  batch = 0
  for n in names:
    a = outputs[n]
    if a.ndim == 0:
      raise invalid_argument(f"Tensor name: {n} has no shape information ")
    if a.shape[0] < 1:
      raise invalid_argument(f"Tensor name: {n} has invalid batch size: {a.shape[0]}")
    if batch and a.shape[0] != batch:
      raise invalid_argument(
          f"Tensor name: {n} has inconsistent batch size: {a.shape[0]} expecting: {batch}")
    batch = a.shape[0]
  columns = {n: _json_values(n, outputs[n]) for n in names}
  if len(names) == 1:
    return {"predictions": columns[names[0]]}
  return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch)]}


def dumps(doc: Any) -> bytes:
  """JSON as TF Serving writes it (NaN/Infinity allowed, as rapidjson does)."""
  return json.dumps(doc, separators=(",", ":")).encode("utf-8")


__all__ = ["dtype_name", "dumps", "json_to_inputs", "numpy_dtype",
           "outputs_to_json", "parse_json", "proto_dtype", "signature_name", "to_numpy",
           "to_proto"]
