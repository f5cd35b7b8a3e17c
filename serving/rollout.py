"""Canary, promote, roll back and retire model versions on a running server.

Works the same on tensorflow/serving and on the embedded server, because it
only uses TF Serving's own API: `ModelService.GetModelStatus` to watch
versions, `ModelService.HandleReloadConfigRequest` to apply a new
`ModelServerConfig`. After the server has accepted a step, the same config is
written to `models.config` (temp file + rename), so a restart, or the server's
own config polling, serves exactly what is running now.

TF Serving refuses a label that points at a version which is not AVAILABLE,
so every move is two steps: first make the version part of the `specific`
version policy and wait until it is AVAILABLE, then move the label. A version
that fails to load is taken out of the policy again and no label moves.

`models.config` keeps base paths relative ("models/<name>"), which the
embedded server resolves against its working directory but
tensorflow_model_server refuses in a reload request; the config sent to the
server therefore has them made absolute under `--base_path_root` (the
directory the server sees the project at: `/srv/vit` in the compose
deployment, the project root for the embedded server).

Labels used:
  stable    the version that takes normal traffic
  canary    the version under trial (clients send it a small share)
  previous  the stable before the last promotion, kept loaded for a rollback
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

State = get_model_status_pb2.ModelVersionStatus.State
STABLE, CANARY, PREVIOUS = "stable", "canary", "previous"


class RolloutError(RuntimeError):
  """A step was refused or failed; the server and models.config are as before."""


@dataclasses.dataclass(frozen=True)
class VersionStatus:
  version: int
  state: str
  error: str


def read_config(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
  config = model_server_config_pb2.ModelServerConfig()
  text_format.Parse(Path(path).read_text(), config)
  return config


def write_config(config: model_server_config_pb2.ModelServerConfig,
                 path: str | os.PathLike) -> None:
  """Writes atomically: a server polling the file never reads half of it."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  with os.fdopen(fd, "w") as f:
    f.write(text_format.MessageToString(config))
  os.replace(tmp, path)


class Rollout:
  """Version and label management for one model of a running server."""

  def __init__(self, server: str, config_path: str | os.PathLike, model: str, *,
               base_path_root: str | None = None, load_timeout_s: float = 300.0,
               rpc_timeout_s: float = 30.0) -> None:
    self.config_path = Path(config_path)
    self.base_path_root = base_path_root or os.getcwd()
    self.model = model
    self.load_timeout_s = load_timeout_s
    self.rpc_timeout_s = rpc_timeout_s
    self._channel = grpc.insecure_channel(server)
    self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

  def close(self) -> None:
    self._channel.close()

  # -- reading -------------------------------------------------------------

  def status(self) -> list[VersionStatus]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = self.model
    try:
      response = self._stub.GetModelStatus(request, timeout=self.rpc_timeout_s)
    except grpc.RpcError as e:
      if e.code() == grpc.StatusCode.NOT_FOUND:
        return []
      raise
    return sorted((VersionStatus(s.version, State.Name(s.state), s.status.error_message)
                   for s in response.model_version_status), key=lambda s: s.version)

  def available(self) -> list[int]:
    return [s.version for s in self.status() if s.state == "AVAILABLE"]

  def labels(self) -> dict[str, int]:
    return dict(self._entry(read_config(self.config_path)).version_labels)

  # -- steps ---------------------------------------------------------------

  def load(self, version: int) -> None:
    """Adds `version` to the served set and waits until it is AVAILABLE.
    On failure the version is dropped again and the error is raised."""
    config = read_config(self.config_path)
    served = set(self._policy_versions(config)) | {version}
    self._set_versions(config, served)
    try:
      self._apply(config)
      self._wait(version, "AVAILABLE")
    except (RolloutError, grpc.RpcError):
      config = read_config(self.config_path)
      self._set_versions(config, served - {version})
      self._apply(config)
      raise

  def set_label(self, label: str, version: int) -> None:
    if version not in self.available():
      raise RolloutError(f"version {version} of {self.model} is not AVAILABLE; "
                         f"label {label!r} stays where it is")
    config = read_config(self.config_path)
    self._entry(config).version_labels[label] = version
    self._apply(config)

  def canary(self, version: int) -> None:
    """Loads `version` and points `canary` at it. The first version ever
    rolled out becomes `stable` directly."""
    self.load(version)
    self.set_label(STABLE if STABLE not in self.labels() else CANARY, version)

  def promote(self) -> None:
    """canary -> stable; the old stable is kept loaded as `previous`."""
    config = read_config(self.config_path)
    labels = self._entry(config).version_labels
    if CANARY not in labels:
      raise RolloutError(f"{self.model} has no canary to promote")
    if STABLE in labels:
      labels[PREVIOUS] = labels[STABLE]
    labels[STABLE] = labels[CANARY]
    del labels[CANARY]
    self._apply(config)

  def rollback(self) -> None:
    """Drops a canary if there is one; otherwise stable -> previous."""
    config = read_config(self.config_path)
    labels = self._entry(config).version_labels
    if CANARY in labels:
      del labels[CANARY]
    elif PREVIOUS in labels:
      if labels[PREVIOUS] not in self.available():
        raise RolloutError(f"previous version {labels[PREVIOUS]} is not AVAILABLE")
      labels[STABLE] = labels[PREVIOUS]
      del labels[PREVIOUS]
    else:
      raise RolloutError(f"{self.model} has neither a canary nor a previous version")
    self._apply(config)

  def retire(self, version: int) -> None:
    """Unloads a version that neither `stable` nor `canary` points at (a
    `previous` label on it is dropped: retiring it gives up that rollback)."""
    config = read_config(self.config_path)
    entry = self._entry(config)
    if entry.version_labels.get(PREVIOUS) == version:
      del entry.version_labels[PREVIOUS]
    pointing = [k for k, v in entry.version_labels.items() if v == version]
    if pointing:
      raise RolloutError(f"version {version} is still labelled {', '.join(pointing)}")
    served = set(self._policy_versions(config)) - {version}
    if not served:
      raise RolloutError(f"version {version} is the last one served")
    self._set_versions(config, served)
    self._apply(config)
    self._wait(version, "END")

  # -- internals -----------------------------------------------------------

  def _entry(self, config: model_server_config_pb2.ModelServerConfig
             ) -> model_server_config_pb2.ModelConfig:
    for entry in config.model_config_list.config:
      if entry.name == self.model:
        return entry
    raise RolloutError(f"model {self.model!r} is not in {self.config_path}")

  def _policy_versions(self, config: model_server_config_pb2.ModelServerConfig
                       ) -> list[int]:
    """The versions the policy serves now; a `latest`/`all` policy is
    pinned to what is AVAILABLE, so switching to `specific` changes nothing."""
    policy = self._entry(config).model_version_policy
    if policy.WhichOneof("policy_choice") == "specific":
      return list(policy.specific.versions)
    return self.available()

  def _set_versions(self, config: model_server_config_pb2.ModelServerConfig,
                    versions: set[int]) -> None:
    policy = self._entry(config).model_version_policy
    policy.ClearField("specific")
    policy.specific.versions.extend(sorted(versions))

  def _apply(self, config: model_server_config_pb2.ModelServerConfig) -> None:
    sent = model_server_config_pb2.ModelServerConfig()
    sent.CopyFrom(config)
    for entry in sent.model_config_list.config:
      if "://" not in entry.base_path and not entry.base_path.startswith("/"):
        entry.base_path = f"{self.base_path_root.rstrip('/')}/{entry.base_path}"
    request = model_management_pb2.ReloadConfigRequest(config=sent)
    # The embedded server answers once new versions have loaded and warmed up,
    # so the call may take as long as a load.
    response = self._stub.HandleReloadConfigRequest(request, timeout=self.load_timeout_s)
    if response.status.error_code != 0:
      raise RolloutError(f"server refused the config: {response.status.error_message}")
    write_config(config, self.config_path)

  def _wait(self, version: int, state: str) -> None:
    deadline = time.monotonic() + self.load_timeout_s
    while time.monotonic() < deadline:
      for s in self.status():
        if s.version != version:
          continue
        if s.state == state:
          return
        if s.state == "END" and state != "END":
          raise RolloutError(f"version {version} of {self.model} failed to load: {s.error}")
      if state == "END" and version not in {s.version for s in self.status()}:
        return
      time.sleep(0.2)
    raise RolloutError(f"version {version} of {self.model} not {state} "
                       f"after {self.load_timeout_s:.0f} s")


_SAMPLE = re.compile(r'^(?P<name>[^\s{]+)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_PER_VERSION = ":embedded_serving:request"


def compare(metrics_text: str, model: str) -> dict[str, dict[str, float]]:
  """Per-version requests, errors and latency (mean, p50, p99 from the
  histogram buckets) of one model, from a Prometheus scrape of the server.

  Reads the embedded server's per-version families; TF Serving has no
  per-version request metrics, so against it this returns {} and the client
  side's per-arm counts (clients.routing) are the comparison to use.
  """
  out: dict[str, dict[str, float]] = {}
  buckets: dict[str, list[tuple[float, float]]] = {}
  for line in metrics_text.splitlines():
    m = _SAMPLE.match(line)
    if not m or not m["name"].startswith(_PER_VERSION):
      continue
    labels = dict(_LABEL.findall(m["labels"] or ""))
    if labels.get("model_name") != model:
      continue
    version, value = labels.get("model_version", ""), float(m["value"])
    cell = out.setdefault(version, {"requests": 0.0, "errors": 0.0, "latency_sum_us": 0.0,
                                    "latency_count": 0.0})
    name = m["name"]
    if name == _PER_VERSION + "_count":
      cell["requests"] += value
      cell["errors"] += 0 if labels.get("status") == "OK" else value
    elif name == _PER_VERSION + "_latency_sum":
      cell["latency_sum_us"] += value
    elif name == _PER_VERSION + "_latency_count":
      cell["latency_count"] += value
    elif name == _PER_VERSION + "_latency_bucket":
      le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
      buckets.setdefault(version, []).append((le, value))
  for version, cell in out.items():
    n = cell.pop("latency_count")
    cell["mean_latency_ms"] = cell.pop("latency_sum_us") / n / 1e3 if n else math.nan
    merged: dict[float, float] = {}
    for le, count in buckets.get(version, []):  # summed over signatures/APIs
      merged[le] = merged.get(le, 0.0) + count
    for q in (0.5, 0.99):
      bound = next((le for le, c in sorted(merged.items()) if n and c >= q * n), math.nan)
      cell[f"p{int(q * 100)}_latency_ms"] = bound / 1e3
  return out


def _print_compare(rollout: Rollout, rest: str) -> None:
  with urllib.request.urlopen(f"http://{rest}/monitoring/prometheus/metrics",
                              timeout=rollout.rpc_timeout_s) as response:
    arms = compare(response.read().decode(), rollout.model)
  if not arms:
    print(f"no per-version metrics for {rollout.model} at {rest} (TF Serving has none; "
          "compare the clients' per-arm counts instead)")
    return
  labels: dict[str, list[str]] = {}
  for label, version in rollout.labels().items():
    labels.setdefault(str(version), []).append(label)
  print(f"{'version':<8} {'labels':<16} {'requests':>9} {'errors':>7} {'mean ms':>8} "
        f"{'p50 ms <=':>10} {'p99 ms <=':>10}")
  for version in sorted(arms, key=lambda v: (len(v), v)):
    a = arms[version]
    print(f"{version or '-':<8} {','.join(sorted(labels.get(version, []))) or '-':<16} "
          f"{a['requests']:>9.0f} {a['errors']:>7.0f} {a['mean_latency_ms']:>8.2f} "
          f"{a['p50_latency_ms']:>10.2f} {a['p99_latency_ms']:>10.2f}")


def _print_status(rollout: Rollout) -> None:
  by_version: dict[int, list[str]] = {}
  for label, version in rollout.labels().items():
    by_version.setdefault(version, []).append(label)
  for s in rollout.status():
    labels = ",".join(sorted(by_version.get(s.version, []))) or "-"
    print(f"{rollout.model}  version {s.version:<4} {s.state:<10} labels {labels}"
          + (f"  error: {s.error}" if s.error else ""))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m serving.rollout", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--server", default="127.0.0.1:8500", help="gRPC address")
  parser.add_argument("--model_config_file", default="models.config")
  parser.add_argument("--model", required=True)
  parser.add_argument("--base_path_root", default=None,
                      help="where the server sees the project (default: the current "
                           "directory; /srv/vit for the compose deployment)")
  parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a load")
  sub = parser.add_subparsers(dest="step", required=True)
  sub.add_parser("status", help="versions, states and labels")
  for step in ("load", "canary", "retire"):
    sub.add_parser(step).add_argument("version", type=int)
  label = sub.add_parser("label", help="point a label at an AVAILABLE version")
  label.add_argument("label")
  label.add_argument("version", type=int)
  sub.add_parser("promote", help="canary becomes stable, old stable kept as previous")
  sub.add_parser("rollback", help="drop the canary, or go back to previous")
  compare_parser = sub.add_parser("compare", help="per-version requests, errors, latency")
  compare_parser.add_argument("--rest", default="127.0.0.1:8501",
                              help="REST address serving /monitoring/prometheus/metrics")
  args = parser.parse_args(argv)

  rollout = Rollout(args.server, args.model_config_file, args.model,
                    base_path_root=args.base_path_root, load_timeout_s=args.timeout)
  try:
    if args.step in ("load", "canary", "retire"):
      getattr(rollout, args.step)(args.version)
    elif args.step == "label":
      rollout.set_label(args.label, args.version)
    elif args.step in ("promote", "rollback"):
      getattr(rollout, args.step)()
    if args.step == "compare":
      _print_compare(rollout, args.rest)
    else:
      _print_status(rollout)
  except (RolloutError, grpc.RpcError, OSError) as e:
    print(f"error: {e.details() if isinstance(e, grpc.RpcError) else e}", file=sys.stderr)
    return 1
  finally:
    rollout.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
