"""Latency while versions are switched, versus steady state.

A small ViT (the default model's architecture, random weights; two seeds are
two versions) is served by the embedded server. Eight client threads send
batch-1 gRPC Predict requests through the clients' label router the whole
time. First a steady window with version 1 as `stable`; then the switch
window: `ops.rollout` loads version 2 (with its warmup) and labels it
`canary`, the clients send it 10%, then it is promoted and version 1 retired.
The p99 latency of requests that started inside each window is compared, and
every failed request is counted (the target is none).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STEADY_S = 8.0
CLIENTS = 8
NAME = "switch"


def _checkpoints(tmp: Path) -> list[Path]:
  import jax
  import export
  from export import digits
  cfg = export.get_config(digits.CONFIG)
  model = export.build_model(cfg)
  x = np.zeros((1, digits.IMAGE_SIZE, digits.IMAGE_SIZE, 3), np.float32)
  paths = []
  for seed in (0, 1):
    params = model.init(jax.random.PRNGKey(seed), x)["params"]
    export.save_checkpoint(params, tmp / f"v{seed + 1}.npz")
    paths.append(tmp / f"v{seed + 1}.npz")
  return paths


class _Load:
  """Client threads; each request is recorded as (start, seconds, ok)."""

  def __init__(self, address: str, image_size: int):
    from clients import GrpcClient, Router, label_arms
    self.client = GrpcClient(address, timeout=30)
    self.router = Router(label_arms({"stable": 1.0}))
    self.images = np.zeros((1, image_size, image_size, 3), np.float32)
    self.records: list[tuple[float, float, bool]] = []
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                     for i in range(CLIENTS)]
    for t in self._threads:
      t.start()

  def _run(self, worker: int) -> None:
    from clients import ClientError
    n = 0
    while not self._stop.is_set():
      n += 1
      arm = self.router.choose(f"{worker}-{n}")
      started = time.monotonic()
      try:
        self.client.predict_images(NAME, self.images, label=arm.label)
        ok = True
      except ClientError:
        ok = False
      with self._lock:
        self.records.append((started, time.monotonic() - started, ok))

  def window(self, start: float, end: float) -> tuple[np.ndarray, int]:
    with self._lock:
      rows = [r for r in self.records if start <= r[0] < end]
    return np.array([r[1] for r in rows if r[2]]), sum(not r[2] for r in rows)

  def stop(self) -> None:
    self._stop.set()
    for t in self._threads:
      t.join(timeout=60)
    self.client.close()


def run() -> list[dict]:
  import export
  from export import digits
  from ops.rollout import Rollout
  from clients import Router, label_arms
  from ops.process import ServerProcess, free_port

  with tempfile.TemporaryDirectory() as tmp_name:
    tmp = Path(tmp_name)
    v1, v2 = _checkpoints(tmp)
    config_file = tmp / "models.config"
    for checkpoint in (v1, v2):
      export.export_checkpoint(str(checkpoint), NAME, tmp / "models", config=digits.CONFIG,
                               labels=digits.LABELS, model_config_file=config_file)
    # Serve version 1 only, as before a new version is rolled out.
    config_file.write_text(config_file.read_text().replace(
        'model_platform: "tensorflow"',
        'model_platform: "tensorflow"\n    model_version_policy { specific { versions: 1 } }'))
    server = ServerProcess([f"--port={free_port()}", "--rest_api_port=0",
                            f"--model_config_file={config_file}",
                            "--file_system_poll_wait_seconds=1",
                            "--xla_cpu_compilation_enabled=true"], cwd=tmp, timeout=300)
    rollout = Rollout(server.grpc_address, config_file, NAME, base_path_root=str(tmp))
    load = None
    try:
      rollout.set_label("stable", 1)
      load = _Load(server.grpc_address, digits.IMAGE_SIZE)
      time.sleep(2.0)  # connections up, first requests out of the way
      steady_start = time.monotonic()
      time.sleep(STEADY_S)
      switch_start = time.monotonic()
      rollout.canary(2)
      load.router = Router(label_arms({"stable": 0.9, "canary": 0.1}))
      time.sleep(2.0)
      load.router = Router(label_arms({"stable": 1.0}))
      time.sleep(0.5)  # requests already routed to the canary finish
      rollout.promote()
      rollout.retire(1)
      switch_end = time.monotonic()
      time.sleep(0.5)
    finally:
      if load is not None:
        load.stop()
      rollout.close()
      server.stop()

  steady, steady_failed = load.window(steady_start, switch_start)
  switch, switch_failed = load.window(switch_start, switch_end)
  p99_steady, p99_switch = np.percentile(steady, 99) * 1e3, np.percentile(switch, 99) * 1e3
  return [
      {"metric": "p99 latency, switch / steady", "value": p99_switch / p99_steady, "unit": "x"},
      {"metric": "p99 latency, steady", "value": p99_steady, "unit": "ms"},
      {"metric": "p99 latency, during switch", "value": p99_switch, "unit": "ms"},
      {"metric": "p50 latency, steady", "value": np.percentile(steady, 50) * 1e3, "unit": "ms"},
      {"metric": "p50 latency, during switch", "value": np.percentile(switch, 50) * 1e3,
       "unit": "ms"},
      {"metric": "switch duration (load+warmup, canary, promote, retire)",
       "value": switch_end - switch_start, "unit": "s"},
      {"metric": "requests answered, steady window", "value": len(steady), "unit": "requests"},
      {"metric": "requests answered, during switch", "value": len(switch), "unit": "requests"},
      {"metric": "failed requests", "value": steady_failed + switch_failed, "unit": "requests"},
  ]
