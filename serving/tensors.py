"""TensorProtos <-> numpy (REST's JSON is serving/rest_json.py).

Requests are decoded without detours (`np.frombuffer` on `tensor_content`,
`tf.make_ndarray` only for the typed repeated fields); responses are written
into the typed fields (`float_val`, ...) as TF Serving does, so clients that
read `outputs[k].float_val` directly keep working.
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import invalid_argument

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
  content = proto.tensor_content        # a copy per access: read it once
  if content and proto.dtype != types_pb2.DT_STRING:
    if len(content) != count * dtype.itemsize:
      raise error
    return np.frombuffer(content, dtype).reshape(shape)
  try:
    return tf.make_ndarray(proto)
  except (TypeError, ValueError, OverflowError):
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


__all__ = ["clip", "dtype_name", "numpy_dtype", "proto_dtype", "to_numpy", "to_proto"]
