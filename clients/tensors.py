"""numpy arrays <-> tensorflow.TensorProto, the way TF Serving expects them.

Numeric arrays travel as `tensor_content` (the raw little-endian bytes, one
copy) rather than the repeated `float_val`/`int_val` fields, which encode each
element separately and are many times slower to build and parse for image
batches (see benchmarks/bench_clients.py). Strings use `string_val`, the only
field TensorFlow has for them. Decoding accepts every field a server may use.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from contract import protos

# numpy dtype <-> DataType name. Little-endian byte order is TF's wire format.
_NUMERIC: dict[str, np.dtype] = {
    "DT_FLOAT": np.dtype("<f4"), "DT_DOUBLE": np.dtype("<f8"),
    "DT_HALF": np.dtype("<f2"), "DT_INT8": np.dtype("i1"),
    "DT_INT16": np.dtype("<i2"), "DT_INT32": np.dtype("<i4"),
    "DT_INT64": np.dtype("<i8"), "DT_UINT8": np.dtype("u1"),
    "DT_UINT16": np.dtype("<u2"), "DT_UINT32": np.dtype("<u4"),
    "DT_UINT64": np.dtype("<u8"), "DT_BOOL": np.dtype("?"),
}
_BY_KIND: dict[tuple[str, int], str] = {(d.kind, d.itemsize): n for n, d in _NUMERIC.items()}

# Where each type's values sit when a sender did not use tensor_content.
_VAL_FIELD: dict[str, str] = {
    "DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_HALF": "half_val",
    "DT_INT8": "int_val", "DT_INT16": "int_val", "DT_INT32": "int_val",
    "DT_UINT8": "int_val", "DT_UINT16": "int_val", "DT_INT64": "int64_val",
    "DT_UINT32": "uint32_val", "DT_UINT64": "uint64_val", "DT_BOOL": "bool_val",
}


def datatype_name(dtype: np.dtype) -> str:
  """The DataType name ("DT_FLOAT", ...) for a numpy dtype."""
  dtype = np.dtype(dtype)
  if dtype.kind in "SUO":
    return "DT_STRING"
  try:
    return _BY_KIND[(dtype.kind, dtype.itemsize)]
  except KeyError:
    raise TypeError(f"no TensorFlow DataType for numpy dtype {dtype}") from None


def datatype_numpy(name: str) -> np.dtype:
  """The numpy dtype for a DataType name; object (of bytes) for DT_STRING."""
  if name == "DT_STRING":
    return np.dtype(object)
  try:
    return _NUMERIC[name]
  except KeyError:
    raise TypeError(f"unsupported TensorFlow DataType {name}") from None


def make_tensor_proto(values: Any) -> Any:
  """A TensorProto holding `values` (an array, or a sequence of bytes/str)."""
  array = as_array(values)
  tensor = protos.TensorProto()
  tensor.tensor_shape.dim.extend(protos.TensorShapeProto.Dim(size=s) for s in array.shape)
  name = datatype_name(array.dtype)
  tensor.dtype = protos.DATA_TYPES[name]
  if name == "DT_STRING":
    tensor.string_val.extend(as_bytes(v) for v in array.reshape(-1))
  else:
    tensor.tensor_content = np.ascontiguousarray(array, dtype=_NUMERIC[name]).tobytes()
  return tensor


def make_ndarray(tensor: Any) -> np.ndarray:
  """The numpy array a TensorProto holds (strings come back as bytes objects)."""
  shape = tuple(d.size for d in tensor.tensor_shape.dim)
  name = protos.DATA_TYPE_NAMES.get(tensor.dtype, str(tensor.dtype))
  size = int(np.prod(shape, dtype=np.int64))
  if name == "DT_STRING":
    values = np.empty(len(tensor.string_val), dtype=object)
    values[:] = list(tensor.string_val)
    return _fill(values, size, name).reshape(shape)
  dtype = datatype_numpy(name)
  if tensor.tensor_content:
    return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape).copy()
  raw = getattr(tensor, _VAL_FIELD[name])
  if name == "DT_HALF":  # half_val holds the float16 bit patterns as ints
    values = np.asarray(raw, dtype=np.uint16).view(np.float16)
  else:
    values = np.asarray(raw, dtype=dtype)
  return _fill(values, size, name).reshape(shape)


def _fill(values: np.ndarray, size: int, name: str) -> np.ndarray:
  # TensorFlow lets a sender give fewer values than elements: the last one
  # repeats (a single value fills the whole tensor).
  if values.size == size:
    return values
  if values.size == 0 or values.size > size:
    raise ValueError(f"{name} tensor has {values.size} values for {size} elements")
  return np.concatenate([values, np.repeat(values[-1:], size - values.size)])


def as_array(values: Any) -> np.ndarray:
  """An array from an array, a scalar, or a sequence of bytes/str (object dtype)."""
  if isinstance(values, np.ndarray):
    return values
  if isinstance(values, (bytes, str)):
    return np.array([values], dtype=object).reshape(())
  if isinstance(values, Sequence) and values and isinstance(values[0], (bytes, str)):
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array
  return np.asarray(values)


def as_bytes(value: Any) -> bytes:
  """One string-tensor element as bytes (str is UTF-8 encoded)."""
  if isinstance(value, bytes):
    return value
  if isinstance(value, str):
    return value.encode("utf-8")
  if isinstance(value, np.bytes_):
    return bytes(value)
  raise TypeError(f"a string tensor needs bytes or str elements, got {type(value).__name__}")
