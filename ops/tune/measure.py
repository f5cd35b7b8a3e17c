"""One measurement: a freshly started server with a candidate's batching
file, the project's closed-loop load (clients.perf) at each concurrency
level, and the server's own batching metrics around each level.

Any server works if it speaks TF Serving's APIs and takes its flags: the
command is a template (`DEFAULT_COMMAND`, the embedded server, or e.g. a
`docker run ... tensorflow/serving:<version>-gpu` line) whose placeholders
the tuner fills in; it is run by /bin/sh in a process group of its own, so
stopping it stops everything it started (`docker run` forwards the signal
to its container).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from clients import perf
from clients.errors import ClientError
from clients.retry import NO_RETRY
from contract import prometheus
from ops.process import free_port
from ops.tune.search import Candidate

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = ("grpc_port", "rest_port", "model_config", "batching_flags",
                "monitoring_config", "workdir", "python")
# `make serve`'s command line (tests/serving/test_deploy_flags.py compares
# them), its ports, files and batching flags the tuner's own; one addition:
# no load retries, so a model that cannot load ends the start at once instead
# of after five retries a minute apart.
DEFAULT_COMMAND = ("{python} -m serving --port={grpc_port} --rest_api_port={rest_port} "
                   "--model_config_file={model_config} --model_config_file_poll_wait_seconds=10 "
                   "--file_system_poll_wait_seconds=5 "
                   "--allow_version_labels_for_unavailable_models=true "
                   "--xla_cpu_compilation_enabled=true {batching_flags} "
                   "--monitoring_config_file={monitoring_config} --enable_model_warmup=true "
                   "--grpc_channel_arguments=grpc.max_connection_age_ms=300000 "
                   "--enable_grpc_healthcheck_service=true --max_num_load_retries=0")
_BATCHING = ":tensorflow:serving:batching_session:"


class ServerError(RuntimeError):
  """The server command failed to start or to load the model."""


def check_template(template: str) -> None:
  """ValueError for an unknown or missing placeholder, before anything runs."""
  import string
  names = {field for _, field, _, _ in string.Formatter().parse(template) if field}
  unknown = names - set(PLACEHOLDERS)
  if unknown:
    raise ValueError(f"--server-cmd: unknown placeholder(s) {sorted(unknown)}; "
                     f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
  needed = {"grpc_port", "rest_port", "batching_flags"} - names
  if needed:
    raise ValueError(f"--server-cmd must contain {', '.join('{' + p + '}' for p in sorted(needed))}")


class Server:
  """The command for one candidate, running until `stop`."""

  def __init__(self, template: str, candidate: Candidate, workdir: Path, model_config: Path,
               model: str, *, timeout: float):
    self.grpc_port, self.rest_port = free_port(), free_port()
    self.log_path = workdir / "server.log"
    monitoring = workdir / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{prometheus.DEFAULT_PATH}" }}\n')
    if candidate.off:
      flags = "--enable_batching=false"
    else:
      batching_file = workdir / "batching_parameters.txt"
      batching_file.write_text(candidate.text_proto())
      flags = f"--enable_batching=true --batching_parameters_file={shlex.quote(str(batching_file))}"
    self.command = template.replace("\n", " ").format(     # a template may span lines
        grpc_port=self.grpc_port, rest_port=self.rest_port, batching_flags=flags,
        model_config=shlex.quote(str(model_config)), workdir=shlex.quote(str(workdir)),
        monitoring_config=shlex.quote(str(monitoring)), python=shlex.quote(sys.executable))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    with open(self.log_path, "wb") as log:
      self.proc = subprocess.Popen(["/bin/sh", "-c", "exec " + self.command], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    started = time.monotonic()
    try:
      self._wait_available(model, timeout)
    except BaseException:
      self.stop()
      raise
    self.start_seconds = time.monotonic() - started

  @property
  def grpc_address(self) -> str:
    return f"127.0.0.1:{self.grpc_port}"

  @property
  def rest_address(self) -> str:
    return f"127.0.0.1:{self.rest_port}"

  def log_tail(self, lines: int = 15) -> str:
    try:
      text = self.log_path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
      return ""
    return "\n".join(text[-lines:])

  def _wait_available(self, model: str, timeout: float) -> None:
    """Polls the REST model status until a version is AVAILABLE; a version
    that ended with an error (a failed load or warmup, which the server may
    retry for minutes) fails at once with the server's message."""
    url = f"http://{self.rest_address}/v1/models/{model}"
    deadline = time.monotonic() + timeout
    while True:
      if self.proc.poll() is not None:
        raise ServerError(f"the server command exited with status {self.proc.returncode} "
                          f"before serving {model}: {self.command}\n{self.log_tail()}")
      try:
        with urllib.request.urlopen(url, timeout=5) as response:
          versions = json.loads(response.read()).get("model_version_status", [])
      except (OSError, ValueError):
        versions = []
      if any(v.get("state") == "AVAILABLE" for v in versions):
        return
      failed = [v["status"]["error_message"] for v in versions if v.get("state") == "END"
                and (v.get("status") or {}).get("error_message")]
      if failed:
        raise ServerError(f"the server failed to load {model}: {failed[0]}: "
                          f"{self.command}\n{self.log_tail()}")
      if time.monotonic() > deadline:
        raise ServerError(f"the server did not serve {model} within {timeout:.0f} s: "
                          f"{self.command}\n{self.log_tail()}")
      time.sleep(0.25)

  def stop(self) -> None:
    if self.proc.poll() is None:
      try:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)
      except ProcessLookupError:
        pass


@dataclasses.dataclass
class Plan:
  """What to measure on each server."""
  model: str
  signature: str
  batch: int
  levels: list[int]
  warmup_s: float
  start_timeout_s: float


def batching_stats(before: list[prometheus.Sample], after: list[prometheus.Sample]) -> dict:
  """Per-level figures from the batching_session metrics' difference: what
  the server actually did (absent when the server does no batching)."""
  def delta(name: str) -> float:
    return prometheus.total(after, _BATCHING + name) - prometheus.total(before, _BATCHING + name)
  batches = delta("processed_batch_size_count")
  if not batches:
    return {}
  padded, padding = delta("processed_batch_size_sum"), delta("padding_size_sum")
  queued = delta("queuing_latency_count")
  return {"batches": int(batches),
          "mean_batch_size": round((padded - padding) / batches, 2),
          "mean_padded_batch_size": round(padded / batches, 2),
          "padding_fraction": round(padding / padded, 3) if padded else 0.0,
          "mean_queueing_ms": round(delta("queuing_latency_sum") / queued / 1e3, 3)
          if queued else None}


def measure(server: Server, plan: Plan, duration: float, p99_ms: float,
            on_level: Callable[[dict], None] | None = None) -> list[dict]:
  """The plan's levels on `server`, each a clients.perf Level as a dict with
  the server's batching figures. Levels after one whose p99 is over twice the
  target are skipped: closed-loop latency only grows with concurrency."""
  from clients import GrpcClient
  with GrpcClient(server.grpc_address, retry=NO_RETRY, timeout=60) as client:
    try:
      signatures = client.metadata(plan.model).signatures
    except ClientError as e:
      raise ServerError(f"cannot read {plan.model}'s metadata: {e}") from None
    if plan.signature not in signatures:
      raise ValueError(f"model {plan.model} has no signature {plan.signature!r} "
                       f"(it has {sorted(signatures)})")
    inputs = perf.random_inputs(signatures[plan.signature], plan.batch)
    results = []
    for concurrency in plan.levels:
      before = _scrape(server)
      (level,) = perf.sweep(client, plan.model, signature=plan.signature, inputs=inputs,
                            levels=[concurrency], duration=duration, warmup=plan.warmup_s)
      row = {**dataclasses.asdict(level), **batching_stats(before, _scrape(server))}
      results.append(row)
      if on_level is not None:
        on_level(row)
      if level.p99_ms > 2 * p99_ms:
        break
    return results


def _scrape(server: Server) -> list[prometheus.Sample]:
  try:
    return prometheus.scrape(server.rest_address)
  except (OSError, ValueError, urllib.error.URLError):
    return []          # a server without the metrics page: report without them
