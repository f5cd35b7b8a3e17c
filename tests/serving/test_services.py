"""The services without a front end: per-model batching parameters, warmup
through the request path, and one service awaited from several event loops."""

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

from serving import inference, warmup
from serving.config import BatchingOptions
from serving.errors import ServingError
from serving.metrics import Call, Metrics
from serving.runner import Runner
from serving.servable import Servable
from serving.server_core import LoadOptions, ServerCore
from serving.services import PredictionService
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


def _service(root: Path, **kwargs) -> PredictionService:
  """A PredictionService over `batched` and `plain`, assembled as server.py
  does (stop it with _stop)."""
  runner = Runner(Metrics(), **kwargs)
  options = inference.Options()
  core = ServerCore(
      LoadOptions(),
      loader=functools.partial(Servable.load,
                               read_batching_params=kwargs.get("per_model_batching", False)),
      warmup=functools.partial(warmup.replay, runner=runner, options=options))
  config = model_server_config_pb2.ModelServerConfig()
  for name in ("batched", "plain"):
    config.model_config_list.config.add(name=name, base_path=str(root / name),
                                        model_platform="tensorflow")
  core.reload_config(config)
  return PredictionService(core, runner, options)


def _stop(service: PredictionService) -> None:
  service.core.stop()
  service.runner.stop()


def _request(model: str, n: int = 1) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((n, S, S, 3), np.float32)))
  return request


def _runs(service: PredictionService) -> float:
  return service.runner.metrics.wrapped_run_count.values().get((), 0)


def test_per_model_batching_parameters(repository):
  service = _service(repository, batching=BatchingOptions(max_batch_size=8),
                     per_model_batching=True)
  try:
    warmed = _runs(service)
    assert warmed == 1                 # the warmup record ran through the batcher
    asyncio.run(service.predict(_request("plain")))
    assert _runs(service) == warmed    # no batching_params.pbtxt: not batched
    asyncio.run(service.predict(_request("batched", 3)))
    assert _runs(service) == warmed + 1
    with pytest.raises(ServingError, match="larger than maximum input batch size 4"):
      asyncio.run(service.predict(_request("batched", 5)))
  finally:
    _stop(service)


def test_one_service_on_several_event_loops(repository):
  service = _service(repository)
  try:
    results: list = []

    def in_thread() -> None:
      results.append(asyncio.run(service.predict(_request("plain"))))

    threads = [threading.Thread(target=in_thread) for _ in range(3)]
    for t in threads:
      t.start()
    results.append(asyncio.run(service.predict(_request("plain"))))
    for t in threads:
      t.join(60)
    logits = [tf.make_ndarray(r.outputs["logits"]) for r in results]
    assert len(logits) == 4 and all(np.array_equal(x, logits[0]) for x in logits)
  finally:
    _stop(service)


def test_services_fill_the_callers_record(repository):
  """The version and signature a call resolved reach the front end's
  metrics record, also when the call then fails."""
  service = _service(repository)
  try:
    call = Call()
    asyncio.run(service.predict(_request("plain"), call=call))
    assert (call.version, call.signature) == (1, "serving_default")
    bad = _request("plain")
    bad.model_spec.signature_name = "predict_uint8"     # float images: a dtype mismatch
    call = Call()
    with pytest.raises(ServingError):
      asyncio.run(service.predict(bad, call=call))
    assert (call.version, call.signature) == (1, "predict_uint8")
  finally:
    _stop(service)
