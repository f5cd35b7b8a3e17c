"""The model repository on disk: versions, atomic publishing, models.config.

Layout (what TF Serving's file-system source polls):

  <repo>/<name>/<version>/      one complete SavedModel per integer version
  <repo>/<name>/.tmp-<pid>-XX/  an export in progress; TF Serving ignores it
                                because its name is not an integer

A version is written into a temporary directory in `<repo>/<name>/` (the same
file system, so the final `os.rename` is atomic) and renamed to its integer
name only when complete and verified: a crash or Ctrl-C at any moment leaves
either no new version or a complete one. A handled failure removes its
temporary directory; one left by a killed process (SIGKILL, power loss) is
removed by the next export of that model once its process is gone. Files are
not fsync'ed, so after a power loss a renamed version may still be incomplete.
An existing version is never overwritten.

`models.config` is a `tensorflow_serving.config.ModelServerConfig` text proto.
A newly exported model gets an entry

  config { name: "<name>" base_path: "<repo>/<name>" model_platform: "tensorflow" }

whose base_path is relative to the config file's directory when the
repository lies below it (else absolute), so the project can move: the
embedded server resolves a relative base_path against its working directory
(it runs from the project root, next to `models.config`), and the compose and
Kubernetes deployments, where tensorflow_model_server refuses relative paths,
serve a copy with them made absolute (serving/config/tfserving-entrypoint.sh).
Existing entries
(policies, labels, ...) and the file's leading comments are left as they are;
the file is rewritten only when an entry is added, through
`clients.model_config.update`, which serializes it with the other writer (the
rollout tool) and replaces the file atomically.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clients import model_config

_TMP_PREFIX = ".tmp-"
_TMP_NAME = re.compile(r"^\.tmp-(\d+)-")


class PublishError(RuntimeError):
  """The version cannot be published (exists already, bad config file, ...)."""


def versions(model_dir: str | os.PathLike) -> list[int]:
  """The published integer versions of a model, ascending."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    return []
  return sorted(int(p.name) for p in model_dir.iterdir()
                if p.name.isdigit() and p.is_dir())


def next_version(model_dir: str | os.PathLike) -> int:
  existing = versions(model_dir)
  return existing[-1] + 1 if existing else 1


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temporaries(model_dir: str | os.PathLike) -> list[Path]:
  """Removes temporary export directories whose process no longer runs."""
  model_dir = Path(model_dir)
  removed = []
  if not model_dir.is_dir():
    return removed
  for p in model_dir.iterdir():
    m = _TMP_NAME.match(p.name)
    if m and p.is_dir() and not _process_alive(int(m.group(1))):
      shutil.rmtree(p, ignore_errors=True)
      removed.append(p)
  return removed


def make_temporary(model_dir: str | os.PathLike) -> Path:
  """A fresh temporary directory for one export inside `model_dir`."""
  return Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=model_dir))


def publish(tmp: str | os.PathLike, model_dir: str | os.PathLike, version: int) -> Path:
  """Atomically renames the finished export `tmp` to `<model_dir>/<version>`."""
  target = Path(model_dir) / str(version)
  if target.exists():
    raise PublishError(f"{target} exists already; versions are never overwritten")
  try:
    os.rename(tmp, target)
  except OSError as e:  # e.g. ENOTEMPTY: another export took this version meanwhile
    raise PublishError(f"cannot publish {target}: {e}") from None
  return target


def default_model_config(repo: str | os.PathLike) -> Path:
  """`models.config` in the parent directory of the repository."""
  return Path(os.path.abspath(repo)).parent / "models.config"


def check_model_config(path: str | os.PathLike) -> None:
  """Fails now, before the slow part of an export, if `path` is unusable."""
  try:
    model_config.read(path)
  except model_config.ModelConfigError as e:
    raise PublishError(str(e)) from None


def base_path_for(repo: str | os.PathLike, name: str, config_path: str | os.PathLike) -> str:
  """`<repo>/<name>` relative to the config file's directory when below it."""
  model_dir = os.path.abspath(os.path.join(repo, name))
  config_dir = os.path.dirname(os.path.abspath(config_path))
  rel = os.path.relpath(model_dir, config_dir)
  return model_dir if rel == ".." or rel.startswith(".." + os.sep) else rel


def ensure_model_entry(config_path: str | os.PathLike, name: str, base_path: str) -> bool:
  """Adds a `config { name base_path model_platform }` entry for `name` unless
  one exists (`clients.model_config.update`: serialized with other writers,
  atomic, comments and mode kept). Returns True when the file was written."""

  def add(config: Any) -> None:
    if model_config.entry(config, name) is None:
      entry = config.model_config_list.config.add()
      entry.name = name
      entry.base_path = base_path
      entry.model_platform = "tensorflow"

  try:
    return model_config.update(config_path, add)
  except model_config.ModelConfigError as e:
    raise PublishError(str(e)) from None
