"""Embedded server throughput, on two randomly initialised models exported
by `export.exporter.export_checkpoint`:

ViT-B/16 (1000 classes, 224 px), compute-bound on a CPU:

1. gRPC Predict (float32 `tensor_content`, batch 8) versus calling the same
   SavedModel signature in-process on the same batch: what the server costs.
   Target: >= 0.9x.
2. REST (JSON "inputs") versus gRPC on the same batch.
3. 16 concurrent clients sending batch-1 requests, with `--enable_batching`
   (max_batch_size 8) versus without: throughput and p50/p99 latency.  Next
   to it the most batching could give here: in-process batch-8 versus
   batch-1 throughput.  A B/16 image is ~0.2 s of arithmetic on two cores
   whatever the batch, so that ideal is near 1x and so is the measured ratio.

The default model's architecture (export.digits.CONFIG: a ~70k-parameter
ViT on 32 px), where a model call costs little more for 32 images than for
one, so per-call overhead dominates, as for a ViT on a GPU:

4. 32 concurrent closed-loop clients sending batch-1 gRPC requests for
   ROUND_SECONDS, batching (max_batch_size 32, allowed sizes 1..32, each
   compiled at load by the warmup file) versus not: throughput, p50/p99
   latency, the mean batch the server formed (its Prometheus histogram).
5. Two bounds beside it: the model-only ideal (in-process batch-32 versus
   batch-1 throughput), and the transport ceiling: the same clients against
   a gRPC server in a separate Python process that answers every Predict
   with the same stored response bytes at once.  Every request pays that
   Python gRPC cost with batching or without, so ceiling / unbatched is the
   most batching can give the embedded server on this machine.

The clients are threads sending pre-serialized requests (so the benchmark
process spends little of the CPU the server needs).  Rounds alternate
between the compared sides so that load from other processes on the machine
hits both alike; the 1-minute load average before and after is reported.
Exported models are cached in .cache/bench_serving/ (delete it to re-export).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

import contract
from benchmarks.exports import export_random
from contract import prometheus

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench_serving"
PREDICT = "/tensorflow.serving.PredictionService/Predict"

NAME = "b16"
BATCH = 8
CLIENTS = 16
REQUESTS_PER_CLIENT = 3
ROUNDS = 3

DIGITS = "digits"
DIGITS_SIZE = 32
DIGITS_CLIENTS = 32
DIGITS_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
ROUND_SECONDS = 4.0
DIGITS_ROUNDS = 3


def export_b16() -> Path:
  import export
  return export_random(NAME, export.get_config("B/16") | {"num_classes": 1000}, 224,
                       (1, BATCH), CACHE)


def export_digits() -> Path:
  from export.digits import CONFIG
  return export_random(DIGITS, CONFIG, DIGITS_SIZE, DIGITS_BATCH_SIZES, CACHE)


def _start(name: str, base: Path, extra: list[str], tmp: Path):
  from ops.process import ServerProcess, free_port
  return ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                        f"--model_name={name}", f"--model_base_path={base}",
                        "--file_system_poll_wait_seconds=0",
                        "--xla_cpu_compilation_enabled=true", *extra], cwd=tmp, timeout=300)


def _batching_flags(tmp: Path, name: str, text: str) -> list[str]:
  path = tmp / f"{name}.batching.config"
  path.write_text(text)
  return ["--enable_batching", f"--batching_parameters_file={path}"]


def _channel(address: str):
  import grpc
  return grpc.insecure_channel(address, options=[
      ("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)])


def _stub(address: str):
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  return prediction_service_pb2_grpc.PredictionServiceStub(_channel(address))


def _request(name: str, images: np.ndarray):
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2
  request = predict_pb2.PredictRequest()
  request.model_spec.name = name
  request.inputs[contract.IMAGES.input_key].CopyFrom(tf.make_tensor_proto(images))   # tensor_content
  return request


def _rest(address: str, images: np.ndarray) -> dict:
  body = json.dumps({"inputs": {contract.IMAGES.input_key: images.tolist()}}).encode()
  with urllib.request.urlopen(urllib.request.Request(
      f"http://{address}/v1/models/{NAME}:predict", data=body), timeout=600) as response:
    return json.loads(response.read())


def _timed(fn: Callable[[], object], calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return time.perf_counter() - start


def _percentiles(prefix: str, latencies: list[float]) -> list[dict]:
  return [{"metric": f"{prefix}_p{q}_latency", "value": float(np.percentile(latencies, q)) * 1e3,
           "unit": "ms"} for q in (50, 99)]


# ------------------------------------------------------------------ B/16

def _concurrent_batch1(stub, images: np.ndarray) -> tuple[float, list[float]]:
  """(wall seconds, per-request latencies) of CLIENTS threads x REQUESTS_PER_CLIENT."""
  requests = [_request(NAME, images[i % len(images)][None]) for i in range(CLIENTS)]

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


def b16_rows(tmp: Path) -> list[dict]:
  import tensorflow as tf
  base = export_b16()
  images = np.random.default_rng(1).uniform(-1, 1, (BATCH, 224, 224, 3)).astype(np.float32)
  rows: list[dict] = []
  batching = _batching_flags(tmp, NAME, "max_batch_size { value: 8 }\n"
                             "batch_timeout_micros { value: 20000 }\n"
                             "max_enqueued_batches { value: 100 }\n"
                             "num_batch_threads { value: 1 }\n")
  plain = _start(NAME, base, [], tmp)
  batched = _start(NAME, base, batching, tmp)
  try:
    signature = tf.saved_model.load(str(base / "1")).signatures[contract.DEFAULT.name]
    tensor, single = tf.constant(images), tf.constant(images[:1])
    local = lambda: signature(images=tensor)          # noqa: E731
    local1 = lambda: signature(images=single)         # noqa: E731
    stub = _stub(plain.grpc_address)
    request = _request(NAME, images)
    remote = lambda: stub.Predict(request, timeout=600)   # noqa: E731
    rest = lambda: _rest(plain.rest_address, images)      # noqa: E731
    for fn in (local, local1, remote, rest):
      fn()                                              # warm every path once
    served = np.asarray(tf.make_ndarray(remote().outputs["logits"]))
    np.testing.assert_allclose(served, local()["logits"].numpy(), rtol=1e-4, atol=1e-4)

    # Each round starts with a different side: with a fixed order, the same
    # model timed in two orders differed by up to 1.5x on the loaded machine.
    sides = [["local", local, 2], ["local1", local1, 3], ["grpc", remote, 2], ["rest", rest, 1]]
    seconds = {name: 0.0 for name, _, _ in sides}
    for r in range(ROUNDS):
      for name, fn, calls in sides[r % len(sides):] + sides[:r % len(sides)]:
        seconds[name] += _timed(fn, calls)
    t_local, t_local1, t_grpc, t_rest = (seconds[k] for k in ("local", "local1", "grpc", "rest"))
    local_ips = ROUNDS * 2 * BATCH / t_local
    local1_ips = ROUNDS * 3 / t_local1
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
         "unit": "x", "note": "B/16 on CPU is compute-bound: a batch of 8 costs nearly 8 "
                              "single images, so batching cannot pay here; see the ideal "
                              "ratio below and the digits rows for an overhead-bound model"},
        {"metric": "batching_off_throughput", "value": off_ips, "unit": "images/s"},
        {"metric": "batching_on_throughput", "value": on_ips, "unit": "images/s"},
        *_percentiles("batching_off", lat_off),
        *_percentiles("batching_on", lat_on),
        {"metric": "batching_ideal_b16_inprocess_batch8_vs_batch1", "value": local_ips / local1_ips,
         "unit": "x", "note": "the most batching 8 requests into one call can give for B/16 "
                              "on this CPU"},
        {"metric": "inprocess_b16_batch1_throughput", "value": local1_ips, "unit": "images/s"},
    ]
  finally:
    plain.stop()
    batched.stop()
  return rows


# ---------------------------------------------------------------- digits

def _closed_loop(address: str, body: bytes, seconds: float) -> tuple[int, float, list[float]]:
  """DIGITS_CLIENTS threads each sending `body` as a Predict, the next as soon
  as the last is answered, for `seconds`: (requests, wall seconds, latencies)."""
  channel = _channel(address)
  predict = channel.unary_unary(PREDICT)        # bytes in, bytes out
  try:
    predict(body, timeout=60)
    stop = time.perf_counter() + seconds

    def client(_: int) -> list[float]:
      out = []
      while time.perf_counter() < stop:
        t = time.perf_counter()
        predict(body, timeout=60)
        out.append(time.perf_counter() - t)
      return out

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(DIGITS_CLIENTS) as pool:
      latencies = [x for xs in pool.map(client, range(DIGITS_CLIENTS)) for x in xs]
    return len(latencies), time.perf_counter() - start, latencies
  finally:
    channel.close()


def _predict_bytes(address: str, body: bytes) -> bytes:
  channel = _channel(address)
  try:
    return channel.unary_unary(PREDICT)(body, timeout=60)
  finally:
    channel.close()


def _logits(response: bytes) -> np.ndarray:
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2
  return tf.make_ndarray(predict_pb2.PredictResponse.FromString(response).outputs["logits"])


def null_server(port: int, response_file: str) -> None:
  """A Python gRPC server whose Predict answers the bytes in `response_file`
  at once; prints "ready" and serves until killed.  Run in a process of its
  own (see `_start_null_server`)."""
  import grpc
  response = Path(response_file).read_bytes()
  handler = grpc.unary_unary_rpc_method_handler(lambda request, context: response)
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(8))
  server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
      "tensorflow.serving.PredictionService", {"Predict": handler})])
  server.add_insecure_port(f"127.0.0.1:{port}")
  server.start()
  print("ready", flush=True)
  server.wait_for_termination()


def _start_null_server(port: int, response: bytes, tmp: Path) -> subprocess.Popen:
  (tmp / "response.bin").write_bytes(response)
  process = subprocess.Popen(
      [sys.executable, "-c", "import sys; from benchmarks.bench_serving import null_server; "
       "null_server(int(sys.argv[1]), sys.argv[2])", str(port), str(tmp / "response.bin")],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert process.stdout is not None
  if process.stdout.readline().strip() != "ready":
    process.kill()
    raise RuntimeError("the reference gRPC server did not start")
  return process


def digits_rows(tmp: Path) -> list[dict]:
  import tensorflow as tf
  from ops.process import free_port
  base = export_digits()
  image = np.random.default_rng(2).uniform(-1, 1, (1, DIGITS_SIZE, DIGITS_SIZE, 3))
  image = image.astype(np.float32)
  body = _request(DIGITS, image).SerializeToString()

  signature = tf.saved_model.load(str(base / "1")).signatures[contract.DEFAULT.name]
  one, full = tf.constant(image), tf.constant(np.repeat(image, DIGITS_BATCH_SIZES[-1], 0))
  call_one = lambda: signature(images=one)       # noqa: E731
  call_full = lambda: signature(images=full)     # noqa: E731
  call_one(), call_full()
  t_one = t_full = 0.0
  for _ in range(ROUNDS):
    t_one += _timed(call_one, 100)
    t_full += _timed(call_full, 10)
  model1_ips = ROUNDS * 100 / t_one
  model32_ips = ROUNDS * 10 * len(full) / t_full

  (tmp / "monitoring.config").write_text("prometheus_config { enable: true }\n")
  monitoring = [f"--monitoring_config_file={tmp / 'monitoring.config'}"]
  batching = _batching_flags(tmp, DIGITS, (
      f"max_batch_size {{ value: {DIGITS_BATCH_SIZES[-1]} }}\n"
      "batch_timeout_micros { value: 2000 }\n"
      "max_enqueued_batches { value: 8 }\n"
      "num_batch_threads { value: 1 }\n"
      + "".join(f"allowed_batch_sizes: {b}\n" for b in DIGITS_BATCH_SIZES)))
  plain = _start(DIGITS, base, monitoring, tmp)
  batched = _start(DIGITS, base, batching + monitoring, tmp)
  null_port = free_port()
  null = None
  try:
    response = _predict_bytes(plain.grpc_address, body)
    np.testing.assert_allclose(_logits(_predict_bytes(batched.grpc_address, body)),
                               _logits(response), rtol=1e-5, atol=1e-5)
    null = _start_null_server(null_port, response, tmp)
    sides = {"off": plain.grpc_address, "on": batched.grpc_address,
             "ceiling": f"127.0.0.1:{null_port}"}
    for address in sides.values():
      _closed_loop(address, body, 1.0)                 # warm every path
    sum_before, count_before = _histogram(batched.rest_address)
    done = {side: [0, 0.0, []] for side in sides}
    for _ in range(DIGITS_ROUNDS):
      for side, address in sides.items():
        n, wall, latencies = _closed_loop(address, body, ROUND_SECONDS)
        done[side][0] += n
        done[side][1] += wall
        done[side][2] += latencies
    sum_after, count_after = _histogram(batched.rest_address)
    mean_batch = (sum_after - sum_before) / max(1.0, count_after - count_before)
  finally:
    if null is not None:
      null.kill()
      null.wait(30)
    plain.stop()
    batched.stop()
  ips = {side: n / wall for side, (n, wall, _) in done.items()}
  return [
      {"metric": "batching_on_vs_off_digits_32_clients_batch1", "value": ips["on"] / ips["off"],
       "unit": "x", "note": "small ViT (export.digits.CONFIG, 32 px): per-request cost "
                            "dominates, as on a GPU"},
      {"metric": "batching_digits_off_throughput", "value": ips["off"], "unit": "requests/s"},
      {"metric": "batching_digits_on_throughput", "value": ips["on"], "unit": "requests/s"},
      *_percentiles("batching_digits_off", done["off"][2]),
      *_percentiles("batching_digits_on", done["on"][2]),
      {"metric": "batching_digits_on_mean_batch_size", "value": mean_batch, "unit": "images"},
      {"metric": "batching_ideal_digits_inprocess_batch32_vs_batch1",
       "value": model32_ips / model1_ips, "unit": "x",
       "note": "what batching saves in the model call alone"},
      {"metric": "inprocess_digits_batch1_throughput", "value": model1_ips, "unit": "images/s"},
      {"metric": "inprocess_digits_batch32_throughput", "value": model32_ips, "unit": "images/s"},
      {"metric": "batching_ceiling_digits_null_server_vs_off", "value": ips["ceiling"] / ips["off"],
       "unit": "x", "note": "a Python gRPC server that does no work at all, over the unbatched "
                            "server: the most batching can give with this transport here"},
      {"metric": "null_grpc_server_throughput", "value": ips["ceiling"], "unit": "requests/s"},
  ]


def _histogram(rest_address: str) -> tuple[float, float]:
  """(sum, count) of the server's processed_batch_size histogram."""
  samples = prometheus.scrape(rest_address)
  name = ":tensorflow:serving:batching_session:processed_batch_size"
  return prometheus.total(samples, f"{name}_sum"), prometheus.total(samples, f"{name}_count")


def run() -> list[dict]:
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    rows = b16_rows(Path(tmp)) + digits_rows(Path(tmp))
  rows += [
      {"metric": "cpu_count", "value": len(os.sched_getaffinity(0)), "unit": "cores"},
      {"metric": "load_average_1min_before", "value": load_before, "unit": "runnable"},
      {"metric": "load_average_1min_after", "value": os.getloadavg()[0], "unit": "runnable"},
  ]
  return rows


if __name__ == "__main__":
  for row in run():
    print(row)
