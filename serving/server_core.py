"""TF Serving's ServerCore (server_core.cc): the models a config names,
which of their versions are loaded and when, their labels, and the
ModelSpec -> servable lookup every request starts with.

For each configured model the repository `<base_path>/<integer version>/` is
polled; the version policy (latest N, all, specific) picks the aspired
versions; new ones are loaded, warmed up from their
assets.extra/tf_serving_warmup_requests and only then become AVAILABLE; old
ones are unloaded only once an aspired version is AVAILABLE
(availability-preserving), so a version that fails to load (reported as END
with its error) never takes the serving one down.  Version labels may only
point at AVAILABLE versions unless allowed otherwise; config reloads (from
the file or HandleReloadConfigRequest) add, change and remove models.
Directories that are not integers (an exporter's `.tmp-123`) are ignored; a
base path that cannot be read (an NFS blip, a directory swap) changes nothing.

How a version is loaded and warmed up is not decided here: the loader
(Servable.load) and the warmup (warmup.replay, which runs the records
through the request path) are given at construction, as TF Serving's
ServerCore is given its source adapters.  The --model_config_file poller
(ConfigFilePoller) applies a changed file through reload_config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import config as config_files
from serving.errors import (Code, ServingError, failed_precondition, invalid_argument,
                            not_found, unavailable)
from serving.metrics import Metrics
from serving.servable import Servable
from serving.tensors import clip

log = logging.getLogger("serving")
# One line per finished poll, off unless asked for (see serving/__main__.py):
# how a test knows a poll ran, where a poll that changes nothing logs nothing.
poll_log = logging.getLogger("serving.polls")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass
class VersionState:
  version: int
  state: str = START
  error: ServingError | None = None
  servable: Servable | None = None
  failures: int = 0
  failed_at: float = 0.0


@dataclasses.dataclass
class Model:
  config: model_server_config_pb2.ModelConfig
  base_path: Path
  versions: dict[int, VersionState] = dataclasses.field(default_factory=dict)
  labels: dict[str, int] = dataclasses.field(default_factory=dict)
  aspired: list[int] = dataclasses.field(default_factory=list)   # newest first, last poll
  base_path_missing: bool = False


@dataclasses.dataclass(frozen=True)
class LoadOptions:
  """How versions are loaded (main.cc flags; the defaults are theirs)."""
  tags: tuple[str, ...] = ("serve",)
  max_load_retries: int = 5
  load_retry_interval_s: float = 60.0
  allow_labels_for_unavailable: bool = False


Loader = Callable[[str, int, Path, tuple[str, ...]], Servable]


class ServerCore:
  """Thread-safe: requests resolve servables while polls load and unload."""

  # How often a reload (or start-up) that waits for new models polls their
  # repositories: a model whose base path does not exist yet is waited for.
  AWAIT_POLL_S = 1.0

  def __init__(self, options: LoadOptions = LoadOptions(), *,
               loader: Loader = Servable.load,
               warmup: Callable[[Servable], int] | None = None,
               metrics: Metrics | None = None):
    """`loader`: (name, version, path, tags) -> a loaded Servable.  `warmup`
    replays a new version's warmup records before it becomes AVAILABLE and
    returns how many it read (None: --enable_model_warmup=false)."""
    self.options = options
    self._loader = loader
    self._warmup = warmup
    self._metrics = metrics
    self._lock = threading.RLock()        # guards _models (cheap, held briefly)
    self._work = threading.Lock()         # serializes loads/unloads
    self._reload = threading.Lock()       # serializes config changes (config_mu_)
    self._models: dict[str, Model] = {}
    self._started = False
    self._stop = threading.Event()
    self._threads: list[threading.Thread] = []

  # ----------------------------------------------------------- configuration

  def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Makes `config` current as ServerCore::ReloadConfig does (server_core.cc).

    The version labels are checked against the versions AVAILABLE now, before
    any model is added, so adding a version and labelling it takes two
    reloads (FAILED_PRECONDITION otherwise) and a refused config changes
    nothing.  Models dropped from the config are unloaded.  The call then
    waits only for the models new to the config, and fails with UNKNOWN when
    one of them does not become AVAILABLE; new versions of models already
    served load in the background, as TF Serving's file-system source picks
    them up at its next poll.  The first config is start-up: every model is
    new, and the error names servables as load_servables_fast.cc does.
    """
    with self._reload:
      labels = self._checked_labels(config)
      with self._work:
        new, kept = self._set_models(config)
        with self._lock:
          for name, model_labels in labels.items():
            self._models[name].labels = model_labels
      first, self._started = not self._started, True
      if kept:
        threading.Thread(target=self._poll_models, args=(kept,), name="reload-poll",
                         daemon=True).start()
      self._await_available(new, "servable" if first else "model")

  def _checked_labels(self, config: model_server_config_pb2.ModelServerConfig
                      ) -> dict[str, dict[str, int]]:
    """The new label maps, or FAILED_PRECONDITION for a label on a version
    that is not AVAILABLE (UpdateModelVersionLabelMap in server_core.cc:
    --allow_version_labels_for_unavailable_models permits it only for a
    label that is new or keeps its version)."""
    out = {}
    with self._lock:
      for cfg in config.model_config_list.config:
        model = self._models.get(cfg.name)
        for label, version in cfg.version_labels.items():
          vs = model.versions.get(version) if model else None
          unchanged = model is None or model.labels.get(label, version) == version
          if (vs is None or vs.state != AVAILABLE) and not (
              self.options.allow_labels_for_unavailable and unchanged):
            raise failed_precondition(
                f"Request to assign label to version {version} of model {cfg.name}, which "
                "is not currently available for inference")
        out[cfg.name] = dict(cfg.version_labels)
    return out

  def _set_models(self, config: model_server_config_pb2.ModelServerConfig
                  ) -> tuple[list[Model], list[Model]]:
    """Adds, updates and removes model entries; (new models, kept models)."""
    wanted = {m.name: m for m in config.model_config_list.config}
    new, kept = [], []
    with self._lock:
      removed = [self._models.pop(n) for n in list(self._models) if n not in wanted]
      for name, cfg in wanted.items():
        base = Path(os.path.abspath(cfg.base_path))    # --model_base_path: to the working dir
        model = self._models.get(name)
        if model is None:
          model = self._models[name] = Model(cfg, base)
          new.append(model)
        else:
          model.config, model.base_path = cfg, base
          kept.append(model)
    for model in removed:
      for vs in model.versions.values():
        if vs.state == AVAILABLE:
          self._unload(model, vs)
    return new, kept

  def _await_available(self, models: list[Model], noun: str) -> None:
    """Polls `models` until each newest aspired version is AVAILABLE; UNKNOWN
    "N model(s) did not become available" once one has failed its loads and
    retries (WaitUntilModelsAvailable in server_core.cc).  A model with no
    version on disk yet is waited for, as TF Serving's state monitor does."""
    pending = list(models)
    failed: list[tuple[Model, VersionState]] = []
    while pending:
      self._poll_models(pending)
      still = []
      for model in pending:
        with self._lock:
          newest = model.versions.get(model.aspired[0]) if model.aspired else None
        if newest is None or newest.state != AVAILABLE:
          if newest is not None and newest.failures > self.options.max_load_retries:
            failed.append((model, newest))
          else:
            still.append(model)
      pending = still
      if pending and self._stop.wait(self.AWAIT_POLL_S):
        raise unavailable("Server is shutting down")
    if failed:
      detail = "".join(f"{{{{name: {m.config.name} version: {vs.version}}} due to error: "
                       f"{vs.error}}}, " for m, vs in failed)
      raise ServingError(Code.UNKNOWN,
                         f"{len(failed)} {noun}(s) did not become available: {{{detail}}}")

  # ------------------------------------------------------------------ polling

  def poll(self) -> None:
    """One pass over every model's repository."""
    with self._lock:
      models = list(self._models.values())
    self._poll_models(models)

  def _poll_models(self, models: list[Model]) -> None:
    with self._work:
      for model in models:
        with self._lock:
          if self._models.get(model.config.name) is not model:
            continue             # removed by a config change meanwhile
        self._poll_model(model)

  def start_polling(self, interval_s: float, config_step: Callable[[], None] | None = None,
                    config_interval_s: float = 0) -> None:
    """Background threads: repository polls every `interval_s` (if > 0), and
    `config_step` (re-read and apply the config file) every
    `config_interval_s` (if > 0)."""
    if interval_s > 0:
      self._spawn("fs-poll", interval_s, self.poll)
    if config_step is not None and config_interval_s > 0:
      self._spawn("config-poll", config_interval_s, config_step)

  def _spawn(self, name: str, interval_s: float, step: Callable[[], None]) -> None:
    def loop() -> None:
      passes = 0
      while not self._stop.wait(interval_s):
        try:
          step()
        except ServingError as e:
          log.error("%s: %s", name, e)
        except Exception:  # noqa: BLE001  (a poll must never kill the server)
          log.exception("%s failed", name)
        passes += 1
        poll_log.debug("%s pass %d done", name, passes)
    t = threading.Thread(target=loop, name=name, daemon=True)
    t.start()
    self._threads.append(t)

  def stop(self) -> None:
    self._stop.set()
    for t in self._threads:
      t.join(timeout=10)

  def _versions_on_disk(self, model: Model) -> dict[int, Path] | None:
    """Version directories, or None when the base path cannot be read: then
    TF Serving's file-system source emits nothing and what is loaded stays
    (PollFileSystemForServable in file_system_storage_path_source.cc).  The
    error is logged when the base path goes missing and when it is back, not
    at every poll."""
    try:
      entries = list(model.base_path.iterdir())
    except OSError as e:
      if not model.base_path_missing:
        log.error("FileSystemStoragePathSource encountered a filesystem access error: "
                  "Could not find base path %s for servable %s (%s); keeping what is loaded",
                  model.base_path, model.config.name, e.strerror)
      model.base_path_missing = True
      return None
    if model.base_path_missing:
      log.info("Base path %s for servable %s is back", model.base_path, model.config.name)
      model.base_path_missing = False
    versions = {int(p.name): p for p in entries if p.name.isdigit() and p.is_dir()}
    if not versions:
      log.warning("No versions of servable %s found under base path %s",
                  model.config.name, model.base_path)
    return versions

  def _aspired(self, model: Model, on_disk: dict[int, Path]) -> list[int]:
    policy = model.config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
      return sorted(on_disk, reverse=True)
    if kind == "specific":
      return sorted((v for v in set(policy.specific.versions) if v in on_disk), reverse=True)
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return sorted(on_disk, reverse=True)[:n]

  def _poll_model(self, model: Model) -> None:
    on_disk = self._versions_on_disk(model)
    if on_disk is None:
      return
    aspired = self._aspired(model, on_disk)
    with self._lock:
      model.aspired = aspired
    for version in aspired:
      vs = model.versions.get(version)
      if vs is not None and vs.state == AVAILABLE:
        continue
      if vs is not None and vs.error is not None and not self._retry_due(vs):
        continue
      self._load(model, version, on_disk[version])
    with self._lock:
      any_aspired_available = any(
          model.versions.get(v) is not None and model.versions[v].state == AVAILABLE
          for v in aspired)
      to_unload = [vs for v, vs in model.versions.items()
                   if v not in aspired and vs.state == AVAILABLE]
      for v in [v for v, vs in model.versions.items()
                if vs.error is not None and v not in on_disk]:
        del model.versions[v]          # a failed version that was removed: forget it
    if any_aspired_available or not aspired:
      for vs in to_unload:
        self._unload(model, vs)

  def _retry_due(self, vs: VersionState) -> bool:
    return (vs.failures <= self.options.max_load_retries
            and time.monotonic() - vs.failed_at >= self.options.load_retry_interval_s)

  def _load(self, model: Model, version: int, path: Path) -> None:
    name = model.config.name
    with self._lock:
      vs = model.versions.setdefault(version, VersionState(version))
      vs.state, vs.error = LOADING, None
    log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
    started = time.monotonic()
    try:
      servable = self._load_saved_model(name, version, path)
      if self._warmup is not None:
        n = self._warmup(servable)
        if n:
          log.info("Finished reading warmup data for model at %s. Number of warmup records "
                   "read: %d.", path, n)
    except ServingError as e:
      self._failed(vs, e, name)
      return
    except Exception as e:  # noqa: BLE001  (a bad version must not stop the server)
      self._failed(vs, ServingError(Code.UNKNOWN, f"{type(e).__name__}: {e}"), name)
      return
    with self._lock:
      vs.servable, vs.state, vs.failures = servable, AVAILABLE, 0
    log.info("Successfully loaded servable version {name: %s version: %d} in %.1f s",
             name, version, time.monotonic() - started)

  def _load_saved_model(self, name: str, version: int, path: Path) -> Servable:
    """The loader, counted as TF's cc/saved_model/loader.cc counts a load
    attempt (warmup is not part of it)."""
    started = time.monotonic()
    ok = False
    try:
      servable = self._loader(name, version, path, self.options.tags)
      ok = True
      return servable
    finally:
      if self._metrics is not None:
        self._metrics.record_load(str(path), ok, time.monotonic() - started)

  def _failed(self, vs: VersionState, error: ServingError, name: str) -> None:
    with self._lock:
      vs.state, vs.error, vs.servable = END, error, None
      vs.failures += 1
      vs.failed_at = time.monotonic()
    log.error("Loading servable: {name: %s version: %d} failed: %s", name, vs.version, error)

  def _unload(self, model: Model, vs: VersionState) -> None:
    with self._lock:
      vs.state = UNLOADING
    log.info("Unloading servable version {name: %s version: %d}", model.config.name, vs.version)
    with self._lock:
      vs.servable, vs.state = None, END    # in-flight requests keep their reference

  # ----------------------------------------------------------------- requests

  def servable(self, spec: model_pb2.ModelSpec) -> Servable:
    """The servable a ModelSpec asks for (ServableRequestFromModelSpec, then
    the manager's lookup), or TF Serving's NOT_FOUND / INVALID_ARGUMENT."""
    if not spec.name:
      raise invalid_argument("ModelSpec has no name specified.")
    version = spec.version.value if spec.HasField("version") else None
    try:
      return self._lookup(spec.name, version, spec.version_label)
    except ServingError as e:          # messages quote the client's names
      raise ServingError(e.code, clip(e.message, 1000)) from None

  def _lookup(self, name: str, version: int | None, label: str) -> Servable:
    with self._lock:
      model = self._models.get(name)
      if label:
        version = _label_version(model, label)
      if version is not None:
        vs = model.versions.get(version) if model else None
        if vs is not None and vs.state == AVAILABLE and vs.servable is not None:
          return vs.servable
        raise not_found(f"Servable not found for request: Specific({name}, {version})")
      if model is not None:
        for v in sorted(model.versions, reverse=True):
          vs = model.versions[v]
          if vs.state == AVAILABLE and vs.servable is not None:
            return vs.servable
      raise not_found(f"Servable not found for request: Latest({name})")

  def status(self, name: str, version: int | None = None) -> list[VersionState]:
    """Version states for GetModelStatus, newest first.  A version label in
    the request is not looked at, as in TF Serving (get_model_status_impl.cc
    reads only the name and version)."""
    with self._lock:
      model = self._models.get(name)
      if model is None or not model.versions:
        raise not_found(f"Could not find any versions of model {name}")
      if version is not None:
        if version not in model.versions:
          raise not_found(f"Could not find version {version} of model {name}")
        return [dataclasses.replace(model.versions[version])]
      return [dataclasses.replace(model.versions[v])
              for v in sorted(model.versions, reverse=True)]


def _label_version(model: Model | None, label: str) -> int:
  if model is None or label not in model.labels:
    raise invalid_argument(f"Unrecognized servable version label: {label}")
  return model.labels[label]


class ConfigFilePoller:
  """Re-reads --model_config_file and applies it when its text changed.

  As Server::PollFilesystemAndReloadConfig (server.cc): a file that does not
  parse (an editor mid-write) changes nothing, and an empty file is taken as
  "no action" (ServerCore::ReloadConfig), not as "unload everything".  A text
  counts as seen only once it applied, so an edit that fails (a label on a
  version that is not loaded yet) is tried again at the next poll; its error
  is logged once per change of text, not at every poll.
  """

  def __init__(self, path: str):
    """Made before start-up reads the file: the text read now is the one
    start-up applies."""
    self.path = path
    self.applied = _read(path)
    self.reported: tuple[str | None, str] | None = None

  def step(self, core: ServerCore) -> None:
    """One poll: read the file, and apply it to `core` if its text changed."""
    text = _read(self.path)
    if text == self.applied:
      self.reported = None         # back to what runs: report the next change again
      return
    if text is None:
      self._report(text, logging.ERROR,
                   f"Failed to read ModelServerConfig file: {self.path}: cannot read it")
      return
    server_config = model_server_config_pb2.ModelServerConfig()
    try:
      text_format.Parse(text, server_config)
    except text_format.ParseError as e:     # logged as TF Serving logs it (server.cc)
      self._report(text, logging.ERROR, config_files.parse_error_line(server_config, e),
                   f"Failed to read ModelServerConfig file: Invalid protobuf file: "
                   f"'{self.path}'")
      return
    if server_config.WhichOneof("config") is None:
      self._report(text, logging.INFO, "Taking no action for empty config.")
      return
    config_files.resolve_base_paths(server_config, self.path)
    try:
      config_files.validate_model_server_config(server_config, self.path)
      if self.reported is None or self.reported[0] != text:   # not a retry
        log.info("Reloading model config from %s", self.path)
      core.reload_config(server_config)
    except ServingError as e:
      self._report(text, logging.ERROR,
                   f"PollFilesystemAndReloadConfig failed to ReloadConfig: {e}")
      return
    self.applied, self.reported = text, None

  def _report(self, text: str | None, level: int, *lines: str) -> None:
    message = "\n".join(lines)
    if self.reported != (text, message):
      for line in lines:
        log.log(level, "%s", line)
      self.reported = (text, message)


def _read(path: str) -> str | None:
  if not path:
    return None
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return None


__all__ = ["AVAILABLE", "END", "ConfigFilePoller", "LOADING", "LoadOptions", "Loader", "START",
           "ServerCore", "UNLOADING", "VersionState"]
