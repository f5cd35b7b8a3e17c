"""Unit tests of the pieces behind the servers: JSON <-> tensors, the
batcher (merging, padding, splitting, limits, deadlines) and the metrics
text, without starting a server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving import tensors
from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import ServingError
from serving.metrics import Metrics
from serving.rollout import compare

FLOAT, UINT8, STRING = types_pb2.DT_FLOAT, types_pb2.DT_UINT8, types_pb2.DT_STRING


def test_json_row_and_columnar_inputs():
  arrays, fmt = tensors.json_to_inputs({"instances": [[1, 2.5], [3, 4]]}, {"x": FLOAT})
  assert fmt == "row" and arrays["x"].dtype == np.float32
  np.testing.assert_array_equal(arrays["x"], [[1, 2.5], [3, 4]])
  arrays, fmt = tensors.json_to_inputs(
      {"inputs": {"a": [[1, 2]], "s": [{"b64": "aGk="}, "yo"]}}, {"a": UINT8, "s": STRING})
  assert fmt == "columnar" and arrays["a"].dtype == np.uint8
  assert arrays["s"].tolist() == [b"hi", b"yo"]
  arrays, _ = tensors.json_to_inputs({"instances": [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]},
                                     {"a": UINT8, "s": STRING})
  assert arrays["a"].tolist() == [1, 2] and arrays["s"].tolist() == [b"x", b"y"]


@pytest.mark.parametrize("doc, message", [
    ({"instances": [[1, 2], [3]]}, "Encountered list at unexpected size"),
    ({"instances": [[1, True]]}, "Type: True is not of expected type: float"),
    ({"instances": [256]}, "out of range"),
    ({"instances": [1.5]}, "is not of expected type: uint8"),
    ({"instances": [{"x": 1, "y": 2}]}, "does not have named input: y"),
])
def test_json_input_errors(doc, message):
  dtype = UINT8 if doc["instances"] in ([256], [1.5]) else FLOAT
  with pytest.raises(ServingError, match=message):
    tensors.json_to_inputs(doc, {"x": dtype})


def test_json_outputs_follow_tf_serving_shapes():
  outputs = {"scores": np.array([[0.5, 0.25]], np.float32),
             "label_bytes": np.array([b"\xff"], dtype=object),
             "label": np.array([b"cat"], dtype=object)}
  row = tensors.outputs_to_json(outputs, "row")
  assert row == {"predictions": [{"label": "cat", "label_bytes": {"b64": "/w=="},
                                  "scores": [0.5, 0.25]}]}
  assert tensors.outputs_to_json({"y": np.array([1, 2], np.int32)}, "columnar") == \
      {"outputs": [1, 2]}
  with pytest.raises(ServingError, match="inconsistent batch size"):
    tensors.outputs_to_json({"a": np.zeros(2), "b": np.zeros(3)}, "row")


def test_tensor_proto_round_trip():
  for array in [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.uint8),
                np.array([[True, False]]), np.array([b"a", b"bc"], dtype=object),
                np.arange(4, dtype=np.int64)]:
    back = tensors.to_numpy(tensors.to_proto(array))
    assert back.dtype == array.dtype and back.tolist() == array.tolist()


class _FakeServable:
  """Records each model call; output = input * 2 per row (any batch size)."""
  name, version = "fake", 1

  def __init__(self, delay: float = 0.0):
    self.calls: list[int] = []
    self.delay = delay

  def call(self, key, inputs):
    time.sleep(self.delay)
    self.calls.append(len(inputs["x"]))
    return {"y": inputs["x"] * 2}


def _concurrently(batcher, servable, rows: list[np.ndarray], key: str = "sig"):
  results: list = [None] * len(rows)

  def one(i):
    try:
      results[i] = batcher(servable, key, {"x": rows[i]})
    except ServingError as e:
      results[i] = e
  threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=30)
  return results


def test_batcher_merges_pads_and_splits():
  metrics = Metrics()
  batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000,
                                    num_batch_threads=1, allowed_batch_sizes=(4, 8)), metrics)
  servable = _FakeServable()
  rows = [np.full((1, 2), i, np.float32) for i in range(3)]
  results = _concurrently(batcher, servable, rows)
  for i, result in enumerate(results):
    np.testing.assert_array_equal(result["y"], rows[i] * 2)    # padding removed
  assert servable.calls == [4]                                 # 3 merged, padded to 4
  assert metrics.padding_size.summary()[("fake", "4", "sig")]["sum"] == 1
  batcher.stop()


def test_batcher_keeps_signatures_apart_and_enforces_limits():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=100_000,
                                    max_enqueued_batches=1, num_batch_threads=1))
  servable = _FakeServable(delay=0.2)
  a = _concurrently(batcher, servable, [np.ones((1, 2), np.float32)], "a")
  b = _concurrently(batcher, servable, [np.ones((1, 2), np.float32)], "b")
  assert servable.calls == [1, 1] and a[0]["y"].shape == b[0]["y"].shape == (1, 2)
  with pytest.raises(ServingError, match="Task size 3 is larger than maximum input batch size 2"):
    batcher(servable, "a", {"x": np.ones((3, 2), np.float32)})
  with pytest.raises(ServingError, match="must have at least one dimension"):
    batcher(servable, "a", {"x": np.float32(1)})
  results = _concurrently(batcher, servable, [np.ones((2, 2), np.float32)] * 4)
  full = [r for r in results if isinstance(r, ServingError)]
  assert full and all("queue to which this task was submitted is full" in e.message
                      for e in full)
  batcher.stop()


def test_batcher_deadline_while_queued():
  batcher = Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=2_000_000,
                                    num_batch_threads=1))
  servable = _FakeServable()
  with pytest.raises(ServingError, match="Deadline exceeded") as info:
    batcher(servable, "s", {"x": np.ones((1, 2), np.float32)}, time.monotonic() + 0.1)
  assert info.value.http_status == 504
  time.sleep(2.2)
  assert servable.calls == []             # the abandoned task never ran
  batcher.stop()


# A timeout no test waits out: in these tests only full batches can run.
NEVER_US = 600_000_000


def test_batcher_runs_full_batches_at_once_on_every_thread():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=NEVER_US,
                                    num_batch_threads=2))
  servable = _FakeServable(delay=0.05)
  rows = [np.full((1, 2), i, np.float32) for i in range(6)]
  results = _concurrently(batcher, servable, rows)
  for i, result in enumerate(results):
    np.testing.assert_array_equal(result["y"], rows[i] * 2)
  assert servable.calls == [2, 2, 2]
  batcher.stop()


def test_batcher_caller_that_gives_up_frees_its_place():
  batcher = Batcher(BatchingOptions(max_batch_size=2, batch_timeout_micros=NEVER_US,
                                    num_batch_threads=1))
  servable = _FakeServable()
  with pytest.raises(ServingError, match="Deadline exceeded"):
    batcher(servable, "s", {"x": np.ones((1, 2), np.float32)}, time.monotonic() + 0.05)
  rows = [np.full((1, 2), i, np.float32) for i in (3, 4)]
  results = _concurrently(batcher, servable, rows, "s")
  assert servable.calls == [2]            # the two new rows, not the abandoned one
  for row, result in zip(rows, results):
    np.testing.assert_array_equal(result["y"], row * 2)
  batcher.stop()


def test_batcher_pads_string_inputs():
  batcher = Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000,
                                    num_batch_threads=1, allowed_batch_sizes=(4,)))
  servable = _FakeServable()
  rows = [np.array([b"a" * (i + 1)], dtype=object) for i in range(3)]
  results = _concurrently(batcher, servable, rows)
  assert servable.calls == [4]
  assert [r["y"].tolist() for r in results] == [[b"aa"], [b"aaaa"], [b"aaaaaa"]]
  batcher.stop()


def test_grpc_handler_threads_can_fill_every_batch():
  from serving.grpc_service import default_max_threads
  assert default_max_threads(None) >= 8
  options = BatchingOptions(max_batch_size=32, num_batch_threads=2)
  assert default_max_threads(options) >= 32 * 3   # two running, one forming


def test_prometheus_text_and_per_version_counts():
  m = Metrics()
  m.record_request(model="m", version=1, signature="s", api="Predict", entrypoint="GRPC",
                   status="OK", latency_us=100)
  m.record_request(model="m", version=2, signature="s", api="Predict", entrypoint="REST",
                   status="INVALID_ARGUMENT", latency_us=300)
  text = m.prometheus_text()
  assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
  assert ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",' \
         'entrypoint="GRPC"} 1' in text
  # What the rollout tool's `compare` reads from a scrape.
  arms = compare(text, "m")
  assert {v: (a["requests"], a["errors"], a["mean_latency_ms"]) for v, a in arms.items()} == {
      "1": (1, 0, 0.1), "2": (1, 1, 0.3)}
  assert arms["1"]["p50_latency_ms"] >= 0.1 and arms["2"]["p99_latency_ms"] >= 0.3


def test_batcher_stop_fails_queued_tasks_instead_of_stranding_them():
  batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=60_000_000,
                                    num_batch_threads=1), Metrics())
  errors = []

  def call():
    try:
      batcher(_FakeServable(), "sig", {"x": np.zeros((1, 2), np.float32)})
    except ServingError as e:
      errors.append(e)

  caller = threading.Thread(target=call)
  caller.start()
  time.sleep(0.2)            # queued, waiting out the 60 s batch timeout
  batcher.stop()
  caller.join(timeout=10)
  assert not caller.is_alive()
  assert [e.code.name for e in errors] == ["UNAVAILABLE"]
