"""A fast stand-in for a TF Serving server, for the tuner's search tests:
`python -m tests.ops.fake_server --port=P --rest_api_port=R
[--enable_batching=true --batching_parameters_file=F] [--fixed_ms=4 --per_item_ms=0.1]
[--load_error=MESSAGE]`.

It starts in a fraction of a second (no TensorFlow), takes
tensorflow_model_server's flags, and answers what the tuner uses: gRPC
GetModelMetadata and Predict for model `fake` (one float input `x` [b, 4]),
REST model status and the batching_session metrics. Its "model" is a known
cost: every model call holds one device for fixed_ms + per_item_ms per
padded row, so batching has an exact, predictable payoff, and the tests can
check that the search finds it. Batching follows the parameters file:
batches up to max_batch_size, formed until full or batch_timeout_micros
after the first request, padded to the next allowed size, run by
num_batch_threads workers.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.server
import json
import threading
import time

import grpc
import numpy as np
from google.protobuf import text_format

from clients import tensors
from contract import protos

MODEL = "fake"


class Device:
  """The simulated accelerator: one model call at a time."""

  def __init__(self, fixed_ms: float, per_item_ms: float):
    self.lock = threading.Lock()
    self.fixed_s, self.per_item_s = fixed_ms / 1e3, per_item_ms / 1e3

  def run(self, rows: int) -> None:
    with self.lock:
      time.sleep(self.fixed_s + self.per_item_s * rows)


class Batcher:
  """Just enough of batching_session: queue, timeout, padding, workers, metrics."""

  def __init__(self, params, device: Device):
    self.max = params.max_batch_size.value or 1000
    self.timeout_s = params.batch_timeout_micros.value / 1e6
    self.allowed = list(params.allowed_batch_sizes)
    self.device = device
    self.cond = threading.Condition()
    self.queue: collections.deque = collections.deque()
    self.stats = collections.Counter()
    for _ in range(params.num_batch_threads.value or 1):
      threading.Thread(target=self._work, daemon=True).start()

  def submit(self) -> None:
    done = threading.Event()
    with self.cond:
      self.queue.append((time.monotonic(), done))
      self.cond.notify_all()
    done.wait()

  def _work(self) -> None:
    while True:
      with self.cond:
        while not self.queue:
          self.cond.wait()
        due = self.queue[0][0] + self.timeout_s
        while len(self.queue) < self.max and time.monotonic() < due:
          self.cond.wait(max(0.0, due - time.monotonic()))
        now = time.monotonic()
        batch = [self.queue.popleft() for _ in range(min(self.max, len(self.queue)))]
      if not batch:
        continue
      padded = next((b for b in self.allowed if b >= len(batch)), len(batch))
      self.device.run(padded)
      with self.cond:
        self.stats.update(batches=1, rows=padded, padding=padded - len(batch),
                          queued=len(batch), queued_us=sum((now - t) * 1e6 for t, _ in batch))
      for _, done in batch:
        done.set()

  def metrics(self) -> str:
    s, m = self.stats, ":tensorflow:serving:batching_session:"
    return (f"{m}processed_batch_size_count {s['batches']}\n"
            f"{m}processed_batch_size_sum {s['rows']}\n"
            f"{m}padding_size_sum{{execution_batch_size=\"0\"}} {s['padding']}\n"
            f"{m}queuing_latency_count{{thread_pool_name=\"\"}} {s['queued']}\n"
            f"{m}queuing_latency_sum{{thread_pool_name=\"\"}} {s['queued_us']}\n")


def metadata() -> object:
  signatures = protos.SignatureDefMap()
  sig = signatures.signature_def["serving_default"]
  sig.method_name = "tensorflow/serving/predict"
  for key, tensor in (("x", sig.inputs["x"]), ("y", sig.outputs["y"])):
    tensor.name, tensor.dtype = f"{key}:0", protos.DATA_TYPES["DT_FLOAT"]
    tensor.tensor_shape.dim.add(size=-1)
    tensor.tensor_shape.dim.add(size=4)
  response = protos.GetModelMetadataResponse()
  response.model_spec.name = MODEL
  response.model_spec.version.value = 1
  response.metadata["signature_def"].Pack(signatures)
  return response


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--rest_api_port", type=int, required=True)
  p.add_argument("--enable_batching", default="false")
  p.add_argument("--batching_parameters_file")
  p.add_argument("--fixed_ms", type=float, default=4.0)
  p.add_argument("--per_item_ms", type=float, default=0.1)
  p.add_argument("--load_error", help="report the version's load as failed with this message")
  args, _ = p.parse_known_args()
  device = Device(args.fixed_ms, args.per_item_ms)
  batcher = None
  if args.enable_batching == "true":
    params = protos.message_class("tensorflow.serving.BatchingParameters")()
    with open(args.batching_parameters_file) as f:
      text_format.Parse(f.read(), params)
    batcher = Batcher(params, device)

  def predict(request, context):
    rows = tensors.make_ndarray(request.inputs["x"]).shape[0]
    batcher.submit() if batcher else device.run(rows)
    response = protos.PredictResponse()
    response.model_spec.name = MODEL
    response.outputs["y"].CopyFrom(tensors.make_tensor_proto(np.zeros((rows, 4), np.float32)))
    return response

  handlers = {
      "Predict": grpc.unary_unary_rpc_method_handler(
          predict, protos.PredictRequest.FromString, lambda r: r.SerializeToString()),
      "GetModelMetadata": grpc.unary_unary_rpc_method_handler(
          lambda request, context: metadata(), protos.GetModelMetadataRequest.FromString,
          lambda r: r.SerializeToString())}
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(128))
  server.add_generic_rpc_handlers(
      [grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", handlers)])
  server.add_insecure_port(f"127.0.0.1:{args.port}")
  server.start()

  class Rest(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
      if self.path == f"/v1/models/{MODEL}":
        state = ({"state": "END", "status": {"error_code": "INVALID_ARGUMENT",
                                             "error_message": args.load_error}}
                 if args.load_error else {"state": "AVAILABLE"})
        body = json.dumps({"model_version_status": [{"version": "1", **state}]})
      elif self.path == "/monitoring/prometheus/metrics":
        body = batcher.metrics() if batcher else ""
      else:
        self.send_error(404)
        return
      self.send_response(200)
      self.end_headers()
      self.wfile.write(body.encode())

    def log_message(self, *args):
      pass

  http.server.ThreadingHTTPServer(("127.0.0.1", args.rest_api_port), Rest).serve_forever()


if __name__ == "__main__":
  main()
