"""ServerCore in process: repository polls, availability-preserving version
changes, load retries, labels, reloads, start-up waits and the config file
poller, each driven step by step (core.poll(), poller.step()) instead of by
a server's timers.

Most tests inject a loader that loads nothing (the semantics are the
core's, whatever a version holds; a version directory holding a file
`broken` fails to load); the ones about real loads use the tiny SavedModels
of tests/serving/tiny_models.py and Servable.load, as the server does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
from tensorflow_serving.apis import model_management_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError
from serving.metrics import Metrics
from serving.runner import Runner
from serving.servable import Servable
from serving.server_core import (AVAILABLE, END, ConfigFilePoller, LoadOptions, ServerCore)
from serving.services import ModelService
from tests.support import tiny_models


@dataclasses.dataclass
class Loaded:
  """What the fake loader returns: enough for the core, which only stores it."""
  name: str
  version: int
  path: Path


class Loader:
  """Counts its calls; a version directory with a file `broken` fails."""

  def __init__(self):
    self.calls: list[tuple[str, int]] = []

  def __call__(self, name: str, version: int, path: Path, tags: tuple[str, ...]) -> Loaded:
    self.calls.append((name, version))
    if (Path(path) / "broken").exists():
      raise ValueError(f"cannot load {path}")
    return Loaded(name, version, Path(path))


def _versions(root: Path, model: str, *versions: int, broken: tuple[int, ...] = ()) -> Path:
  for v in versions:
    (root / model / str(v)).mkdir(parents=True, exist_ok=True)
    if v in broken:
      (root / model / str(v) / "broken").touch()
  return root / model


def _config(root: Path, *models: str, policy: str = "", **labels: int
            ) -> model_server_config_pb2.ModelServerConfig:
  config = model_server_config_pb2.ModelServerConfig()
  for name in models:
    entry = config.model_config_list.config.add(name=name, base_path=str(root / name),
                                                model_platform="tensorflow")
    if policy == "all":
      entry.model_version_policy.all.SetInParent()
    elif policy:
      entry.model_version_policy.specific.versions.extend(int(v) for v in policy.split(","))
    if name == models[0]:
      for label, version in labels.items():
        entry.version_labels[label] = version
  return config


def _core(loader=None, **options) -> ServerCore:
  core = ServerCore(LoadOptions(**options), loader=loader or Loader())
  core.AWAIT_POLL_S = 0.05
  return core


def _spec(name: str = "live", version: int | None = None, label: str = "") -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=name, version_label=label)
  if version is not None:
    spec.version.value = version
  return spec


def _states(core: ServerCore, model: str = "live") -> dict[int, str]:
  return {vs.version: vs.state for vs in core.status(model)}


def _error(fn, *args) -> ServingError:
  with pytest.raises(ServingError) as info:
    fn(*args)
  return info.value


# ------------------------------------------------------------ repository polls

def test_a_new_version_is_served_and_the_old_one_unloaded_after(tmp_path):
  _versions(tmp_path, "live", 1)
  core = _core()
  core.reload_config(_config(tmp_path, "live"))
  assert core.servable(_spec()).version == 1
  _versions(tmp_path, "live", 2)
  (tmp_path / "live" / ".tmp-9").mkdir()            # an exporter mid-write: ignored
  core.poll()
  assert core.servable(_spec()).version == 2
  assert _states(core) == {2: AVAILABLE, 1: END}


def test_a_version_that_fails_to_load_never_replaces_the_serving_one(tmp_path):
  _versions(tmp_path, "live", 1)
  core = _core(max_load_retries=0)
  core.reload_config(_config(tmp_path, "live"))
  _versions(tmp_path, "live", 2, broken=(2,))
  core.poll()
  failed = core.status("live", 2)[0]
  assert failed.state == END and "cannot load" in failed.error.message
  assert core.servable(_spec()).version == 1 and _states(core)[1] == AVAILABLE
  shutil.rmtree(tmp_path / "live" / "2")
  core.poll()
  assert _states(core) == {1: AVAILABLE}            # a removed failed version is forgotten


def test_failed_loads_are_retried_as_often_and_as_late_as_told(tmp_path):
  _versions(tmp_path, "live", 1)
  loader = Loader()
  core = _core(loader, max_load_retries=2, load_retry_interval_s=0.0)
  core.reload_config(_config(tmp_path, "live"))
  _versions(tmp_path, "live", 2, broken=(2,))
  for _ in range(5):
    core.poll()
  assert loader.calls.count(("live", 2)) == 3       # the attempt and 2 retries
  loader = Loader()
  later = _core(loader, max_load_retries=2, load_retry_interval_s=60.0)
  later.reload_config(_config(tmp_path, "live", policy="1"))
  later.reload_config(_config(tmp_path, "live", policy="1,2"))
  _wait(lambda: _states(later).get(2) == END)
  later.poll()
  assert loader.calls.count(("live", 2)) == 1       # the retry is not due yet


def test_a_base_path_missing_for_a_while_keeps_what_is_loaded(tmp_path, caplog):
  """file_system_storage_path_source.cc: nothing is emitted for a base path
  that cannot be read; logged when it goes and when it is back."""
  _versions(tmp_path, "live", 1)
  core = _core()
  core.reload_config(_config(tmp_path, "live"))
  (tmp_path / "live").rename(tmp_path / "away")
  with caplog.at_level(logging.INFO, logger="serving"):
    for _ in range(3):
      core.poll()
    assert core.servable(_spec()).version == 1
    (tmp_path / "away").rename(tmp_path / "live")
    core.poll()
  assert caplog.text.count("Could not find base path") == 1
  assert caplog.text.count("is back") == 1
  assert _states(core) == {1: AVAILABLE}


def test_version_policies(tmp_path):
  _versions(tmp_path, "live", 1, 2, 3)
  for policy, served in (("", {3}), ("all", {1, 2, 3}), ("1,3", {1, 3})):
    core = _core()
    core.reload_config(_config(tmp_path, "live", policy=policy))
    assert {v for v, s in _states(core).items() if s == AVAILABLE} == served


def test_lookups_answer_as_tf_serving(tmp_path):
  _versions(tmp_path, "live", 1)
  core = _core()
  core.reload_config(_config(tmp_path, "live"))
  assert _error(core.servable, _spec("")).message == "ModelSpec has no name specified."
  assert _error(core.servable, _spec(version=7)).message == \
      "Servable not found for request: Specific(live, 7)"
  assert _error(core.servable, _spec("other")).message == \
      "Servable not found for request: Latest(other)"
  assert _error(core.servable, _spec(label="nope")).code_name == "INVALID_ARGUMENT"
  assert _error(core.status, "other").message == "Could not find any versions of model other"
  assert _error(core.status, "live", 4).message == "Could not find version 4 of model live"


# ---------------------------------------------------------------- reloads

def test_labels_move_and_a_label_on_an_unavailable_version_is_refused(tmp_path):
  _versions(tmp_path, "live", 1, 2)
  core = _core()
  core.reload_config(_config(tmp_path, "live", policy="all"))
  core.reload_config(_config(tmp_path, "live", policy="all", stable=1, canary=2))
  assert core.servable(_spec(label="stable")).version == 1
  error = _error(core.reload_config, _config(tmp_path, "live", policy="all", stable=9))
  assert error.code_name == "FAILED_PRECONDITION"
  assert error.message == ("Request to assign label to version 9 of model live, which is not "
                           "currently available for inference")
  assert core.servable(_spec(label="stable")).version == 1     # the refused config changed nothing
  assert core.servable(_spec(label="canary")).version == 2


def test_adding_a_version_and_labelling_it_takes_two_reloads(tmp_path):
  _versions(tmp_path, "live", 1, 2)
  core = _core()
  core.reload_config(_config(tmp_path, "live", policy="1"))
  error = _error(core.reload_config, _config(tmp_path, "live", policy="1,2", canary=2))
  assert error.code_name == "FAILED_PRECONDITION"
  core.poll()
  assert 2 not in _states(core)                     # the refused reload aspired nothing
  core.reload_config(_config(tmp_path, "live", policy="1,2"))
  _wait(lambda: _states(core).get(2) == AVAILABLE)  # loads in the background
  core.reload_config(_config(tmp_path, "live", policy="1,2", canary=2))
  assert core.servable(_spec(label="canary")).version == 2


def test_labels_for_unavailable_versions_when_allowed(tmp_path):
  """server_core.cc: the flag permits a new label, or one that keeps its
  version, on a version that is not AVAILABLE; never a move onto one."""
  _versions(tmp_path, "live", 1)
  core = _core(allow_labels_for_unavailable=True)
  core.reload_config(_config(tmp_path, "live", stable=1, canary=5))
  assert _error(core.servable, _spec(label="canary")).code_name == "NOT_FOUND"
  error = _error(core.reload_config, _config(tmp_path, "live", stable=6, canary=5))
  assert error.code_name == "FAILED_PRECONDITION"


def test_reload_waits_only_for_new_models_and_fails_when_one_does_not_load(tmp_path):
  _versions(tmp_path, "live", 1)
  _versions(tmp_path, "second", 1)
  _versions(tmp_path, "broken", 1, broken=(1,))
  core = _core(max_load_retries=0)
  core.reload_config(_config(tmp_path, "live"))
  core.reload_config(_config(tmp_path, "live", "second"))
  assert core.servable(_spec("second")).version == 1      # up when the reload returns
  # A new version of a model already served is not waited for.
  _versions(tmp_path, "live", 3, broken=(3,))
  core.reload_config(_config(tmp_path, "live", "second"))
  _wait(lambda: _states(core).get(3) == END)
  assert core.servable(_spec()).version == 1
  error = _error(core.reload_config, _config(tmp_path, "live", "second", "broken"))
  assert error.code_name == "UNKNOWN"
  assert error.message.startswith("1 model(s) did not become available: "
                                  "{{{name: broken version: 1} due to error: ")
  assert core.servable(_spec()).version == 1


def test_start_up_fails_naming_the_servables_that_did_not_load(tmp_path):
  _versions(tmp_path, "live", 1)
  _versions(tmp_path, "broken", 1, broken=(1,))
  core = _core(max_load_retries=0)
  error = _error(core.reload_config, _config(tmp_path, "live", "broken"))
  assert error.message.startswith("1 servable(s) did not become available: "
                                  "{{{name: broken version: 1} due to error: ")


def test_models_dropped_from_the_config_are_unloaded(tmp_path):
  _versions(tmp_path, "live", 1)
  _versions(tmp_path, "other", 1)
  core = _core()
  core.reload_config(_config(tmp_path, "live", "other"))
  core.reload_config(_config(tmp_path, "live"))
  assert _error(core.servable, _spec("other")).code_name == "NOT_FOUND"
  assert _error(core.status, "other").code_name == "NOT_FOUND"


def test_start_up_waits_for_a_base_path_that_appears_later(tmp_path):
  core = _core()
  done = threading.Event()
  thread = threading.Thread(target=lambda: (core.reload_config(_config(tmp_path, "live")),
                                            done.set()), daemon=True)
  thread.start()
  assert not done.wait(0.5)                         # waiting, as TF Serving's state monitor
  _versions(tmp_path, "live", 1)
  assert done.wait(30)
  assert core.servable(_spec()).version == 1


def test_stop_ends_a_start_up_that_waits(tmp_path):
  core = _core()
  errors: list[ServingError] = []
  thread = threading.Thread(target=lambda: errors.append(
      _error(core.reload_config, _config(tmp_path, "live"))), daemon=True)
  thread.start()
  time.sleep(0.2)
  core.stop()
  thread.join(30)
  assert [e.message for e in errors] == ["Server is shutting down"]


INVALID_RELOADS = [
    (lambda c: c.Clear(), "ServerModelConfig type not supported by HandleReloadConfigRequest"),
    (lambda c: setattr(c.model_config_list.config[0], "base_path", "live"),
     "Expected model live to have an absolute path or URI; got base_path()=live"),
    (lambda c: c.model_config_list.config[0].ClearField("model_platform"),
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
     "ModelServerConfig::model_platform, model name is live"),
]


@pytest.mark.parametrize("change, message", INVALID_RELOADS)
def test_invalid_reload_requests_are_refused_and_change_nothing(tmp_path, change, message):
  """model_service_impl.cc and server_core.cc refuse these; an empty request
  must not unload every model."""
  _versions(tmp_path, "live", 1)
  core = _core()
  core.reload_config(_config(tmp_path, "live"))
  service = ModelService(core, Runner(Metrics(), threads=1))
  config = _config(tmp_path, "live")
  change(config)
  request = model_management_pb2.ReloadConfigRequest(config=config)
  error = _error(asyncio.run, service.reload(request))
  assert error.code_name == "INVALID_ARGUMENT" and message in error.message
  assert _states(core) == {1: AVAILABLE}
  service.runner.stop()


# -------------------------------------------------------- the config file

def test_config_file_poller(tmp_path, caplog):
  """server.cc PollFilesystemAndReloadConfig: a changed file is applied, an
  empty or half-written one changes nothing, each reported once per change;
  a file that fails to apply is retried at the next poll."""
  _versions(tmp_path, "live", 1)
  _versions(tmp_path, "again", 1)
  path = tmp_path / "models.config"
  good = str(_config(tmp_path, "live"))
  path.write_text(good)
  poller = ConfigFilePoller(str(path))
  core = _core()
  core.reload_config(_config(tmp_path, "live"))
  with caplog.at_level(logging.INFO, logger="serving"):
    for text in ("", good[:len(good) // 2]):
      path.write_text(text)
      for _ in range(3):
        poller.step(core)
    assert caplog.text.count("Taking no action for empty config.") == 1
    assert caplog.text.count("Failed to read ModelServerConfig file: Invalid protobuf file: "
                             f"'{path}'") == 1
    assert caplog.text.count("Error parsing text-format tensorflow.serving.ModelServerConfig: "
                             ) == 1      # the parser's line, as TF Serving logs it
    assert _states(core) == {1: AVAILABLE}
    path.write_text(good)                           # back to what runs: nothing to do
    poller.step(core)
    path.write_text("")
    poller.step(core)
    assert caplog.text.count("Taking no action for empty config.") == 2
    path.write_text(str(_config(tmp_path, "live", "again", canary=7)))   # refused: retried
    poller.step(core)
    poller.step(core)
    assert caplog.text.count("failed to ReloadConfig") == 1
    assert caplog.text.count("Reloading model config") == 1
    path.write_text(str(_config(tmp_path, "live", "again")))
    poller.step(core)
  assert core.servable(_spec("again")).version == 1
  assert caplog.text.count("Reloading model config") == 2


# ---------------------------------------------------- real SavedModels

def test_real_loads_are_counted_and_warmed_up(tmp_path, caplog):
  """Servable.load on the tiny models: a load attempt is counted as TF's
  loader counts it, the warmup runs before the version is AVAILABLE, and a
  file that is no SavedModel fails its version only."""
  tiny_models.write_tf2_model(tmp_path / "live" / "1", warmup=True)
  (tmp_path / "live" / "2").mkdir()
  (tmp_path / "live" / "2" / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
  metrics = Metrics()
  warmed: list[int] = []

  def warmup(servable: Servable) -> int:
    assert _states(core).get(servable.version) != AVAILABLE
    warmed.append(servable.version)
    return 1

  core = ServerCore(LoadOptions(max_load_retries=0), loader=Servable.load, warmup=warmup,
                    metrics=metrics)
  with caplog.at_level(logging.INFO, logger="serving"):
    core.reload_config(_config(tmp_path, "live", policy="1"))
    core.reload_config(_config(tmp_path, "live", policy="1,2"))
    _wait(lambda: _states(core).get(2) == END)
  assert warmed == [1] and core.servable(_spec()).version == 1
  assert "Finished reading warmup data for model at" in caplog.text
  assert "Loading servable: {name: live version: 2} failed" in caplog.text
  attempts = metrics.load_attempt_count.values()
  assert attempts[(str(tmp_path / "live" / "1"), "success")] == 1
  assert attempts[(str(tmp_path / "live" / "2"), "fail")] == 1
  assert metrics.load_latency.values()[(str(tmp_path / "live" / "1"),)] > 0


def _wait(predicate, timeout: float = 30.0) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "condition not reached in time"
    time.sleep(0.02)
