"""A/B switching under load: canary, promote, roll back and retire model
versions on the running embedded server while concurrent gRPC and REST
clients keep predicting, with zero failed requests.

Each version answers differently (its head bias differs), so every response
is tagged with the version that computed it: gRPC reports it in
`model_spec.version`, and both transports are also matched by their logits
against the versions' known outputs (TF Serving's REST response carries no
version).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import export
from clients import (NO_RETRY, ClientError, GrpcClient, RestClient, RoutedClient, Router,
                     label_arms)
from contract import model_config, prometheus
from ops.rollout import Rollout, RolloutError, compare
from tests.support.tiny_models import ServerProcess, free_port

MODEL = "ab"
DATA = Path(__file__).parents[1] / "data"
METRICS = "/metrics"


def write_checkpoint(path: Path, head_shift: float) -> Path:
  """The reference ViT with its head bias shifted: a distinguishable version."""
  cfg = export.get_config(json.loads((DATA / "manifest.json").read_text())
                          ["vit_a_token"]["config"])
  params = export.load_checkpoint(DATA / "vit_a_token.npz", cfg)
  params["head"]["bias"] = params["head"]["bias"] + head_shift * np.arange(10)
  export.save_checkpoint(params, path)
  return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
  """Version 1 exported once (the slow part), and the config and checkpoint
  each test exports version 2 from."""
  src = tmp_path_factory.mktemp("ab-src")
  cfg_json = src / "config.json"
  cfg_json.write_text(json.dumps(json.loads((DATA / "manifest.json").read_text())
                                 ["vit_a_token"]["config"]))
  ckpts = {v: write_checkpoint(src / f"v{v}.npz", shift) for v, shift in ((1, 0.0), (2, 0.5))}
  export.export_checkpoint(str(ckpts[1]), MODEL, src / "models", config=str(cfg_json),
                           model_config_file=src / "models.config")
  return {"src": src, "config": cfg_json, "ckpts": ckpts}


@pytest.fixture
def setup(tmp_path: Path, exported: dict) -> Iterator[tuple]:
  """A server of this test's own over a repository holding version 1, its
  models.config as the exporter left it."""
  root = tmp_path
  shutil.copytree(exported["src"] / "models", root / "models")
  config_file = root / "models.config"
  shutil.copy(exported["src"] / "models.config", config_file)
  (root / "monitoring.config").write_text(
      f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
  server = ServerProcess([f"--port={free_port()}",
                          f"--rest_api_port={free_port()}",
                          f"--model_config_file={config_file}",
                          "--model_config_file_poll_wait_seconds=1",
                          "--file_system_poll_wait_seconds=1",
                          "--xla_cpu_compilation_enabled=true",  # jax2tf exports
                          f"--monitoring_config_file={root / 'monitoring.config'}"], cwd=root)
  yield root, exported["config"], exported["ckpts"], config_file, server
  server.stop()


def failed_requests(server: ServerProcess) -> float:
  """Requests of the model the server itself counted as failed."""
  return sum(s.value for s in prometheus.scrape(server.rest_address, METRICS)
             if s.name == ":tensorflow:serving:request_count"
             and s.labels.get("model_name") == MODEL and s.labels["status"] != "OK")


def expected_logits(root: Path, version: int, images: np.ndarray) -> np.ndarray:
  import tensorflow as tf
  model = tf.saved_model.load(str(root / "models" / MODEL / str(version)))
  return model.signatures["serving_default"](images=tf.constant(images))["logits"].numpy()


class Traffic:
  """Worker threads predicting through label-routed gRPC and REST clients
  until stopped; each result is recorded with the phase it started and ended
  in and the version its logits identify."""

  def __init__(self, server: ServerProcess, images: np.ndarray,
               logits_by_version: dict[int, np.ndarray], threads_per_transport: int = 2):
    self.images = images
    self.logits_by_version = logits_by_version
    self.phase = "start"
    self.router = Router(label_arms({"stable": 1.0}))
    self.results: list[tuple[str, str, str, int | None, int]] = []
    self.failures: list[str] = []
    self._stop = threading.Event()
    self._lock = threading.Condition()
    # Requests in flight per router generation, so a switch can wait for
    # those sent to the old arms before a step removes one.
    self._generation = 0
    self._in_flight: Counter = Counter()
    # No retries: a request that fails once is a failure.
    clients = [GrpcClient(server.grpc_address, retry=NO_RETRY),
               RestClient(server.rest_address, retry=NO_RETRY)]
    self._threads = [threading.Thread(target=self._run, args=(c, i), daemon=True)
                     for c in clients for i in range(threads_per_transport)]
    self._clients = clients
    for t in self._threads:
      t.start()

  def route(self, weights: dict[str, float], timeout: float = 60.0) -> None:
    """New arms; returns once every request sent to the old ones has ended."""
    with self._lock:
      self._generation += 1
      self.phase = "switching"
      self.router = Router(label_arms(weights))
      done = self._lock.wait_for(
          lambda: not any(n for g, n in self._in_flight.items() if g < self._generation),
          timeout)
    assert done, f"requests to the old arms still in flight after {timeout:.0f} s"

  def _run(self, client, worker: int) -> None:
    n = 0
    while not self._stop.is_set():
      n += 1
      with self._lock:
        generation, phase, router = self._generation, self.phase, self.router
        self._in_flight[generation] += 1
      try:
        prediction = RoutedClient(client, MODEL, router).predict_images(
            self.images, key=f"{worker}-{n}")
      except ClientError as e:
        with self._lock:
          self.failures.append(f"{client.transport} {phase}: {e}")
        continue
      finally:
        with self._lock:
          self._in_flight[generation] -= 1
          self._lock.notify_all()
      logits = prediction["logits"]
      matches = [v for v, ref in self.logits_by_version.items()
                 if np.allclose(logits, ref, atol=1e-4)]
      if len(matches) != 1:
        with self._lock:
          self.failures.append(f"{client.transport} {phase}: logits match versions {matches}")
        continue
      with self._lock:
        self.results.append((client.transport, phase, self.phase, prediction.model_version,
                             matches[0]))

  def stop(self) -> None:
    self._stop.set()
    for t in self._threads:
      t.join(timeout=60)
    for c in self._clients:
      c.close()

  def versions(self, phase: str, transport: str | None = None) -> Counter:
    """Versions that answered requests that started and ended in `phase`."""
    with self._lock:
      return Counter(v for tr, start, end, _, v in self.results
                     if start == end == phase and transport in (None, tr))

  def set_phase(self, phase: str, results: int = 10, timeout: float = 120.0) -> None:
    """Starts `phase` and lets traffic run in it until each transport has
    `results` requests that started and ended in it (those that start or
    end outside it, while a step is applied, do not count), or fails after
    `timeout` seconds."""
    self.phase = phase
    deadline = time.monotonic() + timeout
    while min(sum(self.versions(phase, t).values()) for t in ("grpc", "rest")) < results:
      assert time.monotonic() < deadline, (
          f"fewer than {results} results per transport in {phase!r} in {timeout:.0f} s; "
          f"failures: {self.failures[:3]}")
      time.sleep(0.05)


def test_canary_promote_rollback_retire_under_load(setup):
  root, cfg_json, ckpts, config_file, server = setup
  images = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  rollout = Rollout(server.grpc_address, config_file, MODEL, base_path_root=str(root),
                    load_timeout_s=120)
  rollout.canary(1)  # first rollout: version 1 becomes stable, policy pinned
  assert rollout.labels() == {"stable": 1}

  logits = {1: expected_logits(root, 1, images)}
  traffic = Traffic(server, images, logits)
  try:
    traffic.set_phase("v1 stable")
    # A new version is exported while traffic flows; the pinned policy keeps
    # the server from switching to it by itself.
    traffic.phase = "exporting"
    export.export_checkpoint(str(ckpts[2]), MODEL, root / "models", config=str(cfg_json),
                             model_config_file=config_file)
    logits[2] = expected_logits(root, 2, images)
    traffic.set_phase("v2 exported")

    traffic.phase = "switching"
    rollout.canary(2)
    assert rollout.labels() == {"stable": 1, "canary": 2}
    traffic.route({"stable": 0.5, "canary": 0.5})
    traffic.set_phase("canary", results=30)  # the split below
    # The operator's view before promoting: both arms with traffic, no errors.
    arms = compare(prometheus.scrape(server.rest_address, METRICS), MODEL)
    assert arms["1"]["requests"] > 0 and arms["2"]["requests"] > 0, arms
    assert arms["1"]["errors"] == arms["2"]["errors"] == 0, arms
    assert 0 < arms["2"]["p50_latency_ms"] <= arms["2"]["p99_latency_ms"], arms

    traffic.route({"stable": 1.0})
    rollout.promote()
    assert rollout.labels() == {"stable": 2, "previous": 1}
    traffic.set_phase("promoted")

    traffic.phase = "switching"
    rollout.rollback()
    assert rollout.labels() == {"stable": 1}
    traffic.set_phase("rolled back")

    traffic.phase = "switching"
    rollout.canary(2)
    rollout.promote()
    rollout.retire(1)
    assert rollout.available() == [2]
    traffic.set_phase("retired")
  finally:
    traffic.stop()
    rollout.close()

  assert traffic.failures == [], traffic.failures[:5]
  assert failed_requests(server) == 0       # the server's own count, for the whole run
  assert len(traffic.results) > 50
  for tr, _, _, reported, matched in traffic.results:
    if tr == "grpc":
      assert reported == matched  # the server's version tag agrees with the output
  for transport in ("grpc", "rest"):
    assert set(traffic.versions("v1 stable", transport)) == {1}
    assert set(traffic.versions("exporting", transport)) == {1}
    assert set(traffic.versions("v2 exported", transport)) == {1}
    assert set(traffic.versions("promoted", transport)) == {2}
    assert set(traffic.versions("rolled back", transport)) == {1}
    assert set(traffic.versions("retired", transport)) == {2}
  split = traffic.versions("canary")
  assert set(split) == {1, 2} and 0.25 < split[2] / sum(split.values()) < 0.75, split
  # The file on disk says what the server runs: a restart serves the same.
  entry = model_config.entry(model_config.read(config_file), MODEL)
  assert list(entry.model_version_policy.specific.versions) == [2]
  assert dict(entry.version_labels) == {"stable": 2}


def test_broken_version_is_never_labelled_or_served(setup):
  root, _, _, config_file, server = setup
  rollout = Rollout(server.grpc_address, config_file, MODEL, base_path_root=str(root),
                    load_timeout_s=120)
  rollout.canary(1)
  before_labels = rollout.labels()
  assert before_labels == {"stable": 1}
  shutil.copytree(root / "models" / MODEL / "1", root / "models" / MODEL / "2")
  for f in (root / "models" / MODEL / "2" / "variables").glob("variables.data*"):
    f.write_bytes(b"corrupt")

  images = np.zeros((1, 32, 32, 3), np.float32)
  traffic = Traffic(server, images, {1: expected_logits(root, 1, images)})
  try:
    traffic.set_phase("before", results=5)
    with pytest.raises(RolloutError, match="failed to load"):
      rollout.canary(2)
    traffic.set_phase("after", results=5)
    assert rollout.labels() == before_labels
    assert 2 not in rollout.available()
  finally:
    traffic.stop()
    rollout.close()
  assert traffic.failures == []
  assert failed_requests(server) == 0
  assert set(traffic.versions("before")) == set(traffic.versions("after")) == {1}
