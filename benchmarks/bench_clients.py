"""Client-side costs: tensor encodings, payload sizes, and the import itself.

1. A batch of 8 x 224 x 224 x 3 float32 as `tensor_content` (raw bytes) versus
   the repeated `float_val` field: time to build + serialize a PredictRequest
   and to parse + decode it back to numpy (best of several runs).
2. Request bytes for the same eight 224 px photos (crops of sklearn's sample
   images, which JPEG compresses like real photos) sent as float32
   (`serving_default`), uint8 (`predict_uint8`) and JPEG (`predict_bytes`),
   over gRPC (serialized PredictRequest) and REST (JSON body).
3. What a caller pays to import the client: `from clients import GrpcClient` (TF-free
   descriptors) versus the official `tensorflow_serving.apis` messages, which
   import TensorFlow; import time and peak RSS of a fresh process.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from clients import preprocessing, tensors
import contract
from contract import protos

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224


def _best(fn: Callable[[], object], repeat: int = 5) -> float:
  """Fastest of `repeat` runs, in milliseconds."""
  times = []
  for _ in range(repeat):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times) * 1e3


def sample_images(n: int = 8) -> list[np.ndarray]:
  """n uint8 224 px photos: square crops of china.jpg and flower.jpg, resized."""
  from PIL import Image
  from sklearn.datasets import load_sample_images
  photos = load_sample_images().images
  crops = []
  for i in range(n):
    photo = photos[i % len(photos)]
    height, width = photo.shape[:2]
    side = [height, height * 3 // 4, height // 2, height * 2 // 3][(i // len(photos)) % 4]
    top = (height - side) * ((i // 2) % 3) // 2
    left = (width - side) * ((i // 2) % 4) // 3
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    crops.append(np.asarray(crop.resize((SIZE, SIZE), Image.BICUBIC)))
  return crops


def _request(name: str, values: object) -> object:
  request = protos.PredictRequest()
  request.model_spec.name = "vit"
  request.inputs[name].CopyFrom(tensors.make_tensor_proto(values))
  return request


def encodings(batch: np.ndarray) -> list[dict]:
  def encode_content() -> bytes:
    return _request(contract.IMAGES.input_key, batch).SerializeToString()

  def encode_float_val() -> bytes:
    request = protos.PredictRequest()
    tensor = request.inputs[contract.IMAGES.input_key]
    tensor.dtype = protos.DATA_TYPES["DT_FLOAT"]
    tensor.tensor_shape.dim.extend(protos.TensorShapeProto.Dim(size=s) for s in batch.shape)
    tensor.float_val.extend(batch.ravel().tolist())
    return request.SerializeToString()

  content, repeated = encode_content(), encode_float_val()

  def decode_content() -> np.ndarray:
    return tensors.make_ndarray(protos.PredictRequest.FromString(content).inputs[contract.IMAGES.input_key])

  def decode_float_val() -> np.ndarray:
    return tensors.make_ndarray(protos.PredictRequest.FromString(repeated).inputs[contract.IMAGES.input_key])

  assert np.array_equal(decode_content(), batch) and np.array_equal(decode_float_val(), batch)

  def encode_json() -> bytes:
    return json.dumps({"inputs": {contract.IMAGES.input_key: batch.tolist()}}, separators=(",", ":")).encode()

  ms = {"encode_tensor_content": _best(encode_content),
        "encode_float_val": _best(encode_float_val, 3),
        "decode_tensor_content": _best(decode_content),
        "decode_float_val": _best(decode_float_val, 3),
        "encode_rest_json": _best(encode_json, 2)}
  shape = "x".join(map(str, batch.shape))
  rows = [{"metric": f"{k}_{shape}_f32", "value": round(v, 2), "unit": "ms"} for k, v in ms.items()]
  rows += [
      {"metric": "encode_speedup_tensor_content_vs_float_val",
       "value": round(ms["encode_float_val"] / ms["encode_tensor_content"], 1), "unit": "x"},
      {"metric": "decode_speedup_tensor_content_vs_float_val",
       "value": round(ms["decode_float_val"] / ms["decode_tensor_content"], 1), "unit": "x"},
      {"metric": "encode_speedup_tensor_content_vs_rest_json",
       "value": round(ms["encode_rest_json"] / ms["encode_tensor_content"], 1), "unit": "x"},
      {"metric": "request_bytes_tensor_content", "value": len(content), "unit": "B"},
      {"metric": "request_bytes_float_val", "value": len(repeated), "unit": "B"},
  ]
  return rows


def payloads(images: list[np.ndarray]) -> list[dict]:
  from PIL import Image
  pixels = np.stack(images)
  floats = preprocessing.scale(pixels)
  jpegs = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    jpegs.append(buffer.getvalue())
  jpeg_array = np.empty(len(jpegs), dtype=object)
  jpeg_array[:] = jpegs
  grpc_bytes = {"float32": len(_request(contract.IMAGES.input_key, floats).SerializeToString()),
                "uint8": len(_request(contract.IMAGES.input_key, pixels).SerializeToString()),
                "jpeg": len(_request(contract.ENCODED.input_key, jpeg_array).SerializeToString())}
  rest_bytes = {
      "float32": len(json.dumps({"inputs": {contract.IMAGES.input_key: floats.tolist()}}, separators=(",", ":"))),
      "uint8": len(json.dumps({"inputs": {contract.IMAGES.input_key: pixels.tolist()}}, separators=(",", ":"))),
      "jpeg": len(json.dumps({"inputs": {contract.ENCODED.input_key: [
          {"b64": base64.b64encode(j).decode()} for j in jpegs]}}, separators=(",", ":")))}
  n = len(images)
  rows = []
  for transport, sizes in (("grpc", grpc_bytes), ("rest", rest_bytes)):
    rows += [{"metric": f"{transport}_request_bytes_{n}x{SIZE}px_{kind}", "value": size,
              "unit": "B"} for kind, size in sizes.items()]
    rows += [{"metric": f"{transport}_request_size_float32_vs_{kind}",
              "value": round(sizes["float32"] / sizes[kind], 1), "unit": "x"}
             for kind in ("uint8", "jpeg")]
  return rows


# VmHWM (peak RSS of this process image), not getrusage's ru_maxrss, which
# a child started by fork+exec inherits from the parent.
_IMPORT_PROBE = """
import sys, time
start = time.perf_counter()
{imports}
elapsed = time.perf_counter() - start
peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]
print(elapsed, peak, 'tensorflow' in sys.modules)
"""


def import_costs(repeat: int = 3) -> list[dict]:
  # What a caller writes: `import clients` alone is lazy (clients/__init__.py)
  # and would measure almost nothing.
  variants = {"clients": "from clients import GrpcClient",
              "tf_serving_apis": "import grpc\n"
                                 "from tensorflow_serving.apis import predict_pb2, "
                                 "prediction_service_pb2_grpc"}
  measured = {}
  for name, imports in variants.items():
    runs = []
    for _ in range(repeat):
      out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(imports=imports)],
                           cwd=ROOT, check=True, capture_output=True, text=True,
                           env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}).stdout
      seconds, rss_kb, has_tf = out.split()
      runs.append((float(seconds), int(rss_kb) / 1024, has_tf == "True"))
    assert runs[0][2] == (name != "clients"), f"{name}: unexpected TensorFlow import state"
    measured[name] = (min(r[0] for r in runs), min(r[1] for r in runs))
  (t_c, m_c), (t_tf, m_tf) = measured["clients"], measured["tf_serving_apis"]
  return [
      {"metric": "import_seconds_clients", "value": round(t_c, 3), "unit": "s"},
      {"metric": "import_seconds_tf_serving_apis", "value": round(t_tf, 3), "unit": "s"},
      {"metric": "peak_rss_clients", "value": round(m_c, 1), "unit": "MiB"},
      {"metric": "peak_rss_tf_serving_apis", "value": round(m_tf, 1), "unit": "MiB"},
      {"metric": "import_time_tf_vs_clients", "value": round(t_tf / t_c, 1), "unit": "x"},
      {"metric": "peak_rss_tf_vs_clients", "value": round(m_tf / m_c, 1), "unit": "x"},
  ]


def run() -> list[dict]:
  images = sample_images(8)
  batch = preprocessing.scale(np.stack(images))
  return encodings(batch) + payloads(images) + import_costs()


if __name__ == "__main__":
  for row in run():
    print(row)
