"""The core without a front end: per-model batching parameters, warmup
through the request path, and one core awaited from several event loops."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.config import BatchingOptions
from serving.core import Core
from serving.errors import ServingError
from serving.metrics import Metrics
from serving.model_manager import LoadOptions, ModelManager
from serving.servable import Servable
from tests.support import tiny_models

S = tiny_models.IMAGE_SIZE


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
  """`batched` (with batching_params.pbtxt and a warmup record) and `plain`."""
  root = tmp_path_factory.mktemp("core")
  tiny_models.write_tf2_model(root / "batched" / "1", warmup=True)
  (root / "batched" / "1" / "batching_params.pbtxt").write_text(
      "max_batch_size { value: 4 } batch_timeout_micros { value: 1000 } "
      "num_batch_threads { value: 1 }")
  tiny_models.write_tf2_model(root / "plain" / "1")
  return root


def _core(root: Path, **kwargs) -> Core:
  manager = ModelManager(LoadOptions(), loader=functools.partial(
      Servable.load, read_batching_params=kwargs.get("per_model_batching", False)))
  core = Core(manager, Metrics(), **kwargs)
  config = model_server_config_pb2.ModelServerConfig()
  for name in ("batched", "plain"):
    config.model_config_list.config.add(name=name, base_path=str(root / name),
                                        model_platform="tensorflow")
  manager.apply_config(config)
  return core


def _request(model: str, n: int = 1) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((n, S, S, 3), np.float32)))
  return request


def _runs(core: Core) -> float:
  return core.metrics.wrapped_run_count.values().get((), 0)


def test_per_model_batching_parameters(repository):
  core = _core(repository, batching=BatchingOptions(max_batch_size=8),
               per_model_batching=True)
  try:
    warmed = _runs(core)
    assert warmed == 1                 # the warmup record ran through the batcher
    asyncio.run(core.predict(_request("plain")))
    assert _runs(core) == warmed       # no batching_params.pbtxt: not batched
    asyncio.run(core.predict(_request("batched", 3)))
    assert _runs(core) == warmed + 1
    with pytest.raises(ServingError, match="larger than maximum input batch size 4"):
      asyncio.run(core.predict(_request("batched", 5)))
  finally:
    core.stop()


def test_one_core_on_several_event_loops(repository):
  core = _core(repository)
  try:
    results: list = []

    def in_thread() -> None:
      results.append(asyncio.run(core.predict(_request("plain"), api="rest")))

    threads = [threading.Thread(target=in_thread) for _ in range(3)]
    for t in threads:
      t.start()
    results.append(asyncio.run(core.predict(_request("plain"))))
    for t in threads:
      t.join(60)
    logits = [tf.make_ndarray(r.outputs["logits"]) for r in results]
    assert len(logits) == 4 and all(np.array_equal(x, logits[0]) for x in logits)
    counts = core.metrics.request_count.values()
    assert counts[("plain", "OK")] == 4
  finally:
    core.stop()
