"""Canary, promote, roll back and retire model versions on a running server.

Works the same on tensorflow/serving and on the embedded server, because it
only uses TF Serving's own API through the client library (clients.GrpcClient):
`ModelService.GetModelStatus` to watch versions and
`ModelService.HandleReloadConfigRequest` to apply a new `ModelServerConfig`.
Each step edits `models.config` through contract.model_config (the one writer
the exporter uses too: a file lock, an atomic replace, the file's mode kept):
it writes the new file first, then sends the same config to the server, and
puts the old file back if the server refuses it. In that order a server that
polls the file (--model_config_file_poll_wait_seconds) can only read the
config it is being sent, never the one before it: sent first, a poll landing
between the reload and the write re-applied the old file (TF Serving reloads
the file at every poll), and a rollback served the old stable for up to a
poll interval. A restart reads what runs. It imports neither TensorFlow nor
the server, so it starts at once.

TF Serving refuses a label that points at a version which is not AVAILABLE,
and checks labels before it loads anything (server_core.cc), so every move
is two reloads: first make the version part of the `specific` version policy
and wait until it is AVAILABLE, then move the label. A version that fails to
load is taken out of the policy again and no label moves.

`models.config` may keep base paths relative ("models/<name>"), which the
embedded server resolves against the file's directory when it reads the
file, but a reload request must carry absolute ones (server_core.cc): the
config sent to the server has them made absolute under `--base_path_root`
(where the server sees models.config's directory: `/srv/vit` in the compose
deployment; by default the file's own directory, as the embedded server).

Labels used:
  stable    the version that takes normal traffic
  canary    the version under trial (clients send it a small share)
  previous  the stable before the last promotion, kept loaded for a rollback
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from contract import model_config, prometheus
from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.results import VersionStatus

STABLE, CANARY, PREVIOUS = "stable", "canary", "previous"
# The embedded server's per-version request metrics (TF Serving has none).
PER_VERSION = ":embedded_serving:request"


class RolloutError(RuntimeError):
  """A step was refused or failed; the server and models.config are as before."""


class Rollout:
  """Version and label management for one model of a running server."""

  def __init__(self, server: str, config_path: str | os.PathLike, model: str, *,
               base_path_root: str | None = None, load_timeout_s: float = 300.0) -> None:
    self.config_path = Path(config_path)
    self.base_path_root = base_path_root or str(self.config_path.resolve().parent)
    self.model = model
    self.load_timeout_s = load_timeout_s
    self.client = GrpcClient(server)

  def close(self) -> None:
    self.client.close()

  # -- reading -------------------------------------------------------------

  def status(self) -> list[VersionStatus]:
    """The model's versions, oldest first; [] when the server has none."""
    try:
      return sorted(self.client.status(self.model), key=lambda s: s.version)
    except ClientError as e:
      if e.code == "NOT_FOUND":
        return []
      raise

  def available(self) -> list[int]:
    return [s.version for s in self.status() if s.state == "AVAILABLE"]

  def labels(self) -> dict[str, int]:
    return dict(self._entry(model_config.read(self.config_path)).version_labels)

  # -- steps ---------------------------------------------------------------

  def load(self, version: int) -> None:
    """Adds `version` to the served set and waits until it is AVAILABLE.
    On failure the version is dropped again and the error is raised."""
    served = set(self._policy_versions()) | {version}
    self._change(lambda entry: _set_versions(entry, served))
    try:
      self._wait(version, "AVAILABLE")
    except RolloutError:
      self._change(lambda entry: _set_versions(entry, served - {version}))
      raise

  def set_label(self, label: str, version: int) -> None:
    if version not in self.available():
      raise RolloutError(f"version {version} of {self.model} is not AVAILABLE; "
                         f"label {label!r} stays where it is")

    def edit(entry: Any) -> None:
      entry.version_labels[label] = version
    self._change(edit)

  def canary(self, version: int) -> None:
    """Loads `version` and points `canary` at it. The first version ever
    rolled out becomes `stable` directly."""
    self.load(version)
    self.set_label(STABLE if STABLE not in self.labels() else CANARY, version)

  def promote(self) -> None:
    """canary -> stable; the old stable is kept loaded as `previous`."""
    def edit(entry: Any) -> None:
      labels = entry.version_labels
      if CANARY not in labels:
        raise RolloutError(f"{self.model} has no canary to promote")
      if STABLE in labels:
        labels[PREVIOUS] = labels[STABLE]
      labels[STABLE] = labels.pop(CANARY)
    self._change(edit)

  def rollback(self) -> None:
    """Drops a canary if there is one; otherwise stable -> previous."""
    available = self.available()

    def edit(entry: Any) -> None:
      labels = entry.version_labels
      if CANARY in labels:
        del labels[CANARY]
      elif PREVIOUS in labels:
        if labels[PREVIOUS] not in available:
          raise RolloutError(f"previous version {labels[PREVIOUS]} is not AVAILABLE")
        labels[STABLE] = labels.pop(PREVIOUS)
      else:
        raise RolloutError(f"{self.model} has neither a canary nor a previous version")
    self._change(edit)

  def retire(self, version: int) -> None:
    """Unloads a version that neither `stable` nor `canary` points at (a
    `previous` label on it is dropped: retiring it gives up that rollback)."""
    served = set(self._policy_versions()) - {version}

    def edit(entry: Any) -> None:
      if entry.version_labels.get(PREVIOUS) == version:
        del entry.version_labels[PREVIOUS]
      pointing = sorted(k for k, v in entry.version_labels.items() if v == version)
      if pointing:
        raise RolloutError(f"version {version} is still labelled {', '.join(pointing)}")
      if not served:
        raise RolloutError(f"version {version} is the last one served")
      _set_versions(entry, served)
    self._change(edit)
    self._wait(version, "END")

  # -- internals -----------------------------------------------------------

  def _entry(self, config: Any) -> Any:
    entry = model_config.entry(config, self.model)
    if entry is None:
      raise RolloutError(f"model {self.model!r} is not in {self.config_path}")
    return entry

  def _policy_versions(self) -> list[int]:
    """The versions the policy serves now; a `latest`/`all` policy is
    pinned to what is AVAILABLE, so switching to `specific` changes nothing."""
    policy = self._entry(model_config.read(self.config_path)).model_version_policy
    if policy.WhichOneof("policy_choice") == "specific":
      return list(policy.specific.versions)
    return self.available()

  def _change(self, edit: Callable[[Any], None]) -> None:
    """Edits this model's entry in the file, then sends the whole config to
    the server; the file goes back to what it was if the server refuses."""
    def send(config: Any) -> None:
      try:
        # Answered once models new to the config have loaded: allow a load.
        self.client.reload_config(self._absolute(config), timeout=self.load_timeout_s)
      except ClientError as e:
        raise RolloutError(f"server refused the config: {e.code}: {e.message}") from None
    model_config.update(self.config_path, lambda config: edit(self._entry(config)),
                        after_write=send)

  def _absolute(self, config: Any) -> Any:
    sent = type(config)()
    sent.CopyFrom(config)
    for entry in sent.model_config_list.config:
      if "://" not in entry.base_path and not entry.base_path.startswith("/"):
        entry.base_path = f"{self.base_path_root.rstrip('/')}/{entry.base_path}"
    return sent

  def _wait(self, version: int, state: str) -> None:
    deadline = time.monotonic() + self.load_timeout_s
    while time.monotonic() < deadline:
      states = {s.version: s for s in self.status()}
      s = states.get(version)
      if s is None and state == "END":
        return
      if s is not None and s.state == state:
        return
      if s is not None and s.state == "END" and s.error_message:
        raise RolloutError(f"version {version} of {self.model} failed to load: "
                           f"{s.error_message}")
      time.sleep(0.2)
    raise RolloutError(f"version {version} of {self.model} not {state} "
                       f"after {self.load_timeout_s:.0f} s")


def _set_versions(entry: Any, versions: Iterable[int]) -> None:
  policy = entry.model_version_policy
  policy.ClearField("specific")
  policy.specific.versions.extend(sorted(versions))


def compare(samples: Iterable[prometheus.Sample], model: str) -> dict[str, dict[str, float]]:
  """Per-version requests, errors and latency (mean, and p50/p99 as the
  upper bound of the histogram bucket they fall in) of one model, from a
  scrape of the embedded server's per-version families; {} against TF
  Serving, which has none (the clients' per-arm counts are the comparison
  there)."""
  out: dict[str, dict[str, float]] = {}
  buckets: dict[str, dict[float, float]] = {}
  for s in samples:
    if not s.name.startswith(PER_VERSION) or s.labels.get("model_name") != model:
      continue
    version = s.labels.get("model_version", "")
    cell = out.setdefault(version, {"requests": 0.0, "errors": 0.0, "latency_sum_us": 0.0,
                                    "latency_count": 0.0})
    if s.name == PER_VERSION + "_count":
      cell["requests"] += s.value
      cell["errors"] += 0 if s.labels.get("status") == "OK" else s.value
    elif s.name == PER_VERSION + "_latency_sum":
      cell["latency_sum_us"] += s.value
    elif s.name == PER_VERSION + "_latency_count":
      cell["latency_count"] += s.value
    elif s.name == PER_VERSION + "_latency_bucket":   # summed over signatures and APIs
      le = math.inf if s.labels["le"] == "+Inf" else float(s.labels["le"])
      merged = buckets.setdefault(version, {})
      merged[le] = merged.get(le, 0.0) + s.value
  for version, cell in out.items():
    n = cell.pop("latency_count")
    cell["mean_latency_ms"] = cell.pop("latency_sum_us") / n / 1e3 if n else math.nan
    for q in (0.5, 0.99):
      bound = next((le for le, c in sorted(buckets.get(version, {}).items())
                    if n and c >= q * n), math.nan)
      cell[f"p{int(q * 100)}_latency_ms"] = bound / 1e3
  return out


# -- command line ------------------------------------------------------------

def _labels_by_version(rollout: Rollout) -> dict[int, list[str]]:
  by_version: dict[int, list[str]] = {}
  for label, version in rollout.labels().items():
    by_version.setdefault(version, []).append(label)
  return by_version


def _print_status(rollout: Rollout) -> None:
  by_version = _labels_by_version(rollout)
  for s in rollout.status():
    labels = ",".join(sorted(by_version.get(s.version, []))) or "-"
    print(f"{rollout.model}  version {s.version:<4} {s.state:<10} labels {labels}"
          + (f"  error: {s.error_message}" if s.error_message else ""))


def _print_compare(rollout: Rollout, rest: str, metrics_path: str) -> None:
  arms = compare(prometheus.scrape(rest, metrics_path), rollout.model)
  if not arms:
    print(f"no per-version metrics for {rollout.model} at {rest}{metrics_path} (TF Serving "
          "has none; compare the clients' per-arm counts instead)")
    return
  by_version = _labels_by_version(rollout)
  print(f"{'version':<8} {'labels':<16} {'requests':>9} {'errors':>7} {'mean ms':>8} "
        f"{'p50 ms <=':>10} {'p99 ms <=':>10}")
  for version in sorted(arms, key=lambda v: (len(v), v)):
    a = arms[version]
    labels = ",".join(sorted(by_version.get(int(version), []))) if version.isdigit() else ""
    print(f"{version or '-':<8} {labels or '-':<16} {a['requests']:>9.0f} {a['errors']:>7.0f} "
          f"{a['mean_latency_ms']:>8.2f} {a['p50_latency_ms']:>10.2f} "
          f"{a['p99_latency_ms']:>10.2f}")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m ops.rollout", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--server", default="127.0.0.1:8500",
                      help="the server's gRPC address (default %(default)s)")
  parser.add_argument("--model_config_file", default="models.config",
                      help="the models.config the server reads (default %(default)s)")
  parser.add_argument("--model", required=True, help="the model to change")
  parser.add_argument("--base_path_root", default=None,
                      help="where the server sees the project, for relative base paths "
                           "(default: --model_config_file's directory; /srv/vit for the "
                           "compose deployment)")
  parser.add_argument("--timeout", type=float, default=300.0,
                      help="seconds to wait for a version to load or unload (default "
                           "%(default)s)")
  sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
  sub.add_parser("status", help="versions, their states and labels",
                 description="Print every version of the model, its state and labels.")
  steps = {
      "load": "load a version without labelling it; wait until it is AVAILABLE",
      "canary": "load a version and label it canary (stable if it is the first)",
      "retire": "unload a version no label points at (drops a previous label on it)"}
  for step, text in steps.items():
    sub.add_parser(step, help=text, description=text[0].upper() + text[1:] + ".").add_argument(
        "version", type=int, help="the version number (its directory under the base path)")
  label = sub.add_parser("label", help="point a label at an AVAILABLE version",
                         description="Point a label at an AVAILABLE version.")
  label.add_argument("label", help="the label, e.g. stable")
  label.add_argument("version", type=int, help="the version number")
  sub.add_parser("promote", help="canary becomes stable; the old stable is kept as previous",
                 description="Move stable to the canary's version, keep the old stable "
                             "loaded as previous.")
  sub.add_parser("rollback", help="drop the canary, or go back to previous",
                 description="Drop the canary label if there is one; otherwise point stable "
                             "back at previous.")
  compare_parser = sub.add_parser(
      "compare", help="per-version requests, errors and latency from the server's metrics",
      description="Per-version requests, errors and latency, from the embedded server's "
                  "Prometheus metrics (TF Serving has no per-version metrics).")
  compare_parser.add_argument("--rest", default="127.0.0.1:8501",
                              help="the server's REST address (default %(default)s)")
  compare_parser.add_argument("--metrics_path", default=prometheus.DEFAULT_PATH,
                              help="prometheus_config.path of the server's "
                                   "--monitoring_config_file (default %(default)s)")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
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
      _print_compare(rollout, args.rest, args.metrics_path)
    else:
      _print_status(rollout)
  except (RolloutError, ClientError, model_config.ModelConfigError, OSError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  finally:
    rollout.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
