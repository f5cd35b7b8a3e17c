"""Embedded server throughput, on a randomly initialised ViT-B/16 (1000
classes, 224 px) exported by `export.exporter.export_checkpoint`:

1. gRPC Predict (float32 `tensor_content`, batch 8) versus calling the same
   SavedModel signature in-process on the same batch: what the server costs.
   Target: >= 0.9x.
2. REST (JSON "inputs") versus gRPC on the same batch.
3. 16 concurrent clients sending batch-1 requests, with `--enable_batching`
   (max_batch_size 8) versus without: throughput and p50/p99 latency.

Rounds alternate between the compared sides so that load from other
processes on the machine hits both alike.  The exported model is cached in
.cache/bench_serving/ (delete it to re-export).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_serving"
NAME = "b16"
BATCH = 8
CLIENTS = 16
REQUESTS_PER_CLIENT = 3
ROUNDS = 3


def export_b16() -> Path:
  """<cache>/b16 holding version 1 of a random-weights B/16 (seeded)."""
  base = CACHE / NAME
  if (base / "1" / "saved_model.pb").exists():
    return base
  import jax
  import jax.numpy as jnp
  import export
  from export.exporter import export_checkpoint
  cfg = dict(export.get_config("B/16")) | {"num_classes": 1000}
  model = export.build_model(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 224, 224, 3)), train=False))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (rng.normal(size=s.shape) * 0.02).astype(np.float32), shapes["params"])
  CACHE.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
    checkpoint = Path(tmp) / "b16_random.npz"
    export.save_checkpoint(params, checkpoint)
    export_checkpoint(str(checkpoint), NAME, CACHE, config=cfg, image_size=224,
                      model_config_file=None, warmup_batch_sizes=(1, 8), version=1)
  return base


def _start(base: Path, extra: list[str], tmp: Path):
  from tests.serving.helpers import ServerProcess, free_port
  return ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                        f"--model_name={NAME}", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0", *extra], cwd=tmp, timeout=300)


def _stub(address: str):
  import grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  channel = grpc.insecure_channel(address, options=[
      ("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)])
  return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _request(images: np.ndarray):
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2
  request = predict_pb2.PredictRequest()
  request.model_spec.name = NAME
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))   # tensor_content
  return request


def _rest(address: str, images: np.ndarray) -> dict:
  body = json.dumps({"inputs": {"images": images.tolist()}}).encode()
  with urllib.request.urlopen(urllib.request.Request(
      f"http://{address}/v1/models/{NAME}:predict", data=body), timeout=600) as response:
    return json.loads(response.read())


def _timed(fn, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return time.perf_counter() - start


def _concurrent_batch1(stub, images: np.ndarray) -> tuple[float, list[float]]:
  """(wall seconds, per-request latencies) of CLIENTS threads x REQUESTS_PER_CLIENT."""
  requests = [_request(images[i % len(images)][None]) for i in range(CLIENTS)]

  def client(i: int) -> list[float]:
    out = []
    for _ in range(REQUESTS_PER_CLIENT):
      t = time.perf_counter()
      stub.Predict(requests[i], timeout=600)
      out.append(time.perf_counter() - t)
    return out

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
    latencies = [x for xs in pool.map(client, range(CLIENTS)) for x in xs]
  return time.perf_counter() - start, latencies


def run() -> list[dict]:
  import tensorflow as tf
  base = export_b16()
  images = np.random.default_rng(1).uniform(-1, 1, (BATCH, 224, 224, 3)).astype(np.float32)
  rows: list[dict] = []
  with tempfile.TemporaryDirectory() as tmp:
    batching = Path(tmp) / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n"
                        "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 1 }\n")
    plain = _start(base, [], Path(tmp))
    batched = _start(base, ["--enable_batching", f"--batching_parameters_file={batching}"],
                     Path(tmp))
    try:
      signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
      tensor = tf.constant(images)
      local = lambda: signature(images=tensor)          # noqa: E731
      stub = _stub(plain.grpc_address)
      request = _request(images)
      remote = lambda: stub.Predict(request, timeout=600)   # noqa: E731
      rest = lambda: _rest(plain.rest_address, images)      # noqa: E731
      for fn in (local, remote, rest):
        fn()                                              # warm every path once
      served = np.asarray(tf.make_ndarray(remote().outputs["logits"]))
      np.testing.assert_allclose(served, local()["logits"].numpy(), rtol=1e-4, atol=1e-4)

      t_local = t_grpc = t_rest = 0.0
      for _ in range(ROUNDS):
        t_local += _timed(local, 2)
        t_grpc += _timed(remote, 2)
        t_rest += _timed(rest, 1)
      local_ips = ROUNDS * 2 * BATCH / t_local
      grpc_ips = ROUNDS * 2 * BATCH / t_grpc
      rest_ips = ROUNDS * BATCH / t_rest
      rows += [
          {"metric": "grpc_vs_inprocess_b16_batch8", "value": grpc_ips / local_ips, "unit": "x"},
          {"metric": "inprocess_b16_batch8_throughput", "value": local_ips, "unit": "images/s"},
          {"metric": "grpc_b16_batch8_throughput", "value": grpc_ips, "unit": "images/s"},
          {"metric": "rest_vs_grpc_b16_batch8", "value": rest_ips / grpc_ips, "unit": "x"},
          {"metric": "rest_b16_batch8_throughput", "value": rest_ips, "unit": "images/s"},
      ]

      batched_stub = _stub(batched.grpc_address)
      _concurrent_batch1(batched_stub, images)      # warm both
      _concurrent_batch1(stub, images)
      wall_off, lat_off, wall_on, lat_on = 0.0, [], 0.0, []
      for _ in range(2):
        w, lat = _concurrent_batch1(stub, images)
        wall_off, lat_off = wall_off + w, lat_off + lat
        w, lat = _concurrent_batch1(batched_stub, images)
        wall_on, lat_on = wall_on + w, lat_on + lat
      n = 2 * CLIENTS * REQUESTS_PER_CLIENT
      off_ips, on_ips = n / wall_off, n / wall_on
      rows += [
          {"metric": "batching_on_vs_off_16_clients_batch1", "value": on_ips / off_ips,
           "unit": "x"},
          {"metric": "batching_off_throughput", "value": off_ips, "unit": "images/s"},
          {"metric": "batching_on_throughput", "value": on_ips, "unit": "images/s"},
          {"metric": "batching_off_p50_latency", "value": np.percentile(lat_off, 50) * 1e3,
           "unit": "ms"},
          {"metric": "batching_off_p99_latency", "value": np.percentile(lat_off, 99) * 1e3,
           "unit": "ms"},
          {"metric": "batching_on_p50_latency", "value": np.percentile(lat_on, 50) * 1e3,
           "unit": "ms"},
          {"metric": "batching_on_p99_latency", "value": np.percentile(lat_on, 99) * 1e3,
           "unit": "ms"},
      ]
    finally:
      plain.stop()
      batched.stop()
  rows.append({"metric": "cpu_count", "value": len(os.sched_getaffinity(0)), "unit": "cores"})
  return rows


if __name__ == "__main__":
  for row in run():
    print(row)
