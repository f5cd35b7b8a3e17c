"""The model repository on disk: versions, atomic publishing, models.config.

Layout (what TF Serving's file-system source polls):

  <repo>/<name>/<version>/      one complete SavedModel per integer version
  <repo>/<name>/.tmp-<pid>-XX/  an export in progress; TF Serving ignores it
                                because its name is not an integer

A version is written into a temporary directory in `<repo>/<name>/` (the same
file system, so the final `os.rename` is atomic) and renamed to its integer
name only when complete and verified: a crash or Ctrl-C at any moment leaves
either no new version or a complete one. An existing version is never
overwritten. Files are not fsync'ed, so after a power loss a renamed version
may still be incomplete.

Several writers may share a repository (containers on one volume, CI jobs),
so a live export is recognised by a lock, not by its process id (the pid in
the name is only for people: another PID namespace has other pids). The
writer holds an exclusive `flock` on the temporary directory from creation to
rename; the next export of the model removes a temporary directory only when
it can take that lock, i.e. when its writer has died (SIGKILL, power loss) and
the kernel released it. flock covers every process on one kernel (containers
included); on NFS it depends on the server's lock support.

Temporary directories are created with mode 0777 minus the umask, so a
published version gets the permissions the umask gives (0755 under the usual
022) and a server running as another user can read it.

Each version's `assets.extra/export_manifest.json` records a fingerprint of
what was exported (checkpoint sha256 and options); `find_export` (and
`remote.RemoteRepository.find_export`, through the same `matching_version`)
lets a retry of the same export find the version an earlier run published
instead of making a second one.

`models.config` is a `tensorflow_serving.config.ModelServerConfig` text proto.
A newly exported model gets an entry

  config { name: "<name>" base_path: "<repo>/<name>" model_platform: "tensorflow" }

whose base_path is relative to the config file's directory when the
repository lies below it (else absolute), so the project can move: the
embedded server resolves a relative base_path against its working directory
(it runs from the project root, next to `models.config`), and the compose and
Kubernetes deployments, where tensorflow_model_server refuses relative paths,
serve a copy with them made absolute (deploy/config/tfserving-entrypoint.sh).
Existing entries (policies, labels, ...) and the file's leading comments are
left as they are; the file is rewritten only when an entry is added, through
`contract.model_config.update`, which serializes it with the other writer (the
rollout tool) and replaces the file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from contract import model_config

_TMP_PREFIX = ".tmp-"
MANIFEST = Path("assets.extra") / "export_manifest.json"
"""Where in a version the exporter writes its manifest (the one place that
knows; object storage uses `MANIFEST.as_posix()`)."""


class PublishError(RuntimeError):
  """The version cannot be published (exists already, bad config file, ...)."""


class NotRegisteredError(PublishError):
  """The version IS published, but models.config could not be updated."""

  def __init__(self, message: str, target: Path):
    super().__init__(message)
    self.target = target


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


def _try_lock(path: Path) -> int | None:
  """An fd holding the exclusive lock of directory `path`, or None when a
  live writer holds it, the directory is gone, or it is not ours to open."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  return fd


def remove_stale_temporaries(model_dir: str | os.PathLike) -> list[Path]:
  """Removes the temporary export directories that no live writer holds."""
  model_dir = Path(model_dir)
  removed = []
  if not model_dir.is_dir():
    return removed
  for p in sorted(model_dir.iterdir()):
    if not p.name.startswith(_TMP_PREFIX) or not p.is_dir():
      continue
    fd = _try_lock(p)
    if fd is None:
      continue
    try:
      shutil.rmtree(p, ignore_errors=True)
    finally:
      os.close(fd)
    removed.append(p)
  return removed


def _create_locked(model_dir: Path) -> tuple[Path, int]:
  """A new temporary directory and the fd holding its lock.

  Between `mkdir` and `flock` another export may take the still unlocked
  directory for stale and remove it; then the lock is on a deleted directory,
  which the inode comparison detects, and a new one is made.
  """
  for _ in range(5):
    path = model_dir / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(path, 0o777)  # the umask applies, and so to the published version
    try:
      fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
      continue
    fcntl.flock(fd, fcntl.LOCK_EX)
    with contextlib.suppress(FileNotFoundError):
      if os.path.samestat(os.fstat(fd), os.stat(path)):
        return path, fd
    os.close(fd)
  raise PublishError(f"cannot create a temporary directory in {model_dir}: another "
                     f"export keeps removing them")


@contextlib.contextmanager
def staging(model_dir: str | os.PathLike) -> Iterator[Path]:
  """A locked temporary directory for one export inside `model_dir`.

  The lock is held for the whole block, so concurrent exports never take it
  for stale. Whatever is still there when the block ends (not published, or
  after an error) is removed.
  """
  path, fd = _create_locked(Path(model_dir))
  try:
    yield path
  finally:
    try:
      shutil.rmtree(path, ignore_errors=True)  # a published one is no longer there
    finally:
      os.close(fd)


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


def matching_version(candidates: Iterable[int], read_manifest: Callable[[int], bytes],
                     fingerprint: str) -> int | None:
  """The first of the `candidates` versions whose manifest records
  `fingerprint`, or None: the one "already published?" rule, for local and
  object-storage repositories (`read_manifest(version)` reads its MANIFEST;
  a version without a readable one is not an export of ours)."""
  for v in candidates:
    try:
      manifest = json.loads(read_manifest(v))
    except (OSError, ValueError):
      continue
    if isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint:
      return v
  return None


def find_export(model_dir: str | os.PathLike, fingerprint: str,
                version: int | None = None) -> Path | None:
  """The published version whose manifest has `fingerprint` (only `version`
  when given), or None: how a retry finds what an earlier run published."""
  model_dir = Path(model_dir)
  found = matching_version([version] if version is not None else versions(model_dir),
                           lambda v: (model_dir / str(v) / MANIFEST).read_bytes(), fingerprint)
  return None if found is None else model_dir / str(found)


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
  one exists (`contract.model_config.update`: serialized with other writers,
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
