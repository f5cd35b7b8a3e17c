"""Publishing a finished export into an object-storage model repository.

`python -m export --repo gs://bucket/models` (or `s3://...`, or any other
fsspec URL) exports and verifies into a local staging repository exactly as
for a local `--repo`, then hands the finished version directory to
`RemoteRepository.publish`. Object stores have no directories and no atomic
rename: `<name>/<N>/` "exists" as soon as its first object does, and TF
Serving's file-system source may list it at any poll. So the publish is
ordered so that a poll never finds a loadable but incomplete version:

  1. upload every file under `<name>/.tmp-<UTC time>-<random>/`; TF Serving
     ignores children of the base path whose names are not integers, so the
     slow client-side upload is invisible to it, and a failed or killed
     upload leaves no integer version behind;
  2. check the uploaded sizes, check that `<N>` is still free, then copy
     server-side (CopyObject / rewrite: no data through the client, seconds)
     everything except `saved_model.pb` into `<name>/<N>/`, check it, and
     copy `saved_model.pb` LAST;
  3. delete the staging prefix.

What a server sees, by version policy:

  * `specific` (what ops/rollout.py writes): the server never looks at
    `<N>/` before models.config lists N, which happens after publishing, so
    the publish is atomic for it.
  * `latest` / `all`: during step 2's copies a poll can list `<N>/` without
    `saved_model.pb` (never the other way round: GCS and S3 are strongly
    consistent, so once `saved_model.pb` is listed everything copied before it
    is readable). TF Serving then fails to load N ("SavedModel not found"),
    keeps serving the versions it has (the availability-preserving policy
    loads before it unloads), and retries after --load_retry_interval_micros
    (default 60 s) up to --max_num_load_retries times (default 5): the retry
    after the copy loads the complete version. Only with
    --max_num_load_retries=0, or copies slower than all the retries, does N
    stay in the error state (TF Serving does not retry a version that stays
    aspired) until the server restarts or N is removed and re-added.

A handled failure removes the staging prefix and whatever it copied into
`<N>/`. A staging prefix left by a killed process is harmless (ignored by TF
Serving) and is removed by a later publish of that model once it is older
than `STALE_AFTER`; a copy killed in step 2 leaves a `<N>/` without
`saved_model.pb`, which no server can load and which later exports skip
(versions are never overwritten). Only one exporter should publish a given
model at a time: object stores offer no lock, and two publishes racing for
the same N can both pass the "still free" check.

Credentials and endpoints come from the protocol's usual configuration
(s3fs: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, ...;
gcsfs: Application Default Credentials, STORAGE_EMULATOR_HOST).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import posixpath
import re
import secrets
from pathlib import Path

import fsspec

from export.repository import MANIFEST, PublishError, matching_version

log = logging.getLogger("export")

SAVED_MODEL = "saved_model.pb"
STALE_AFTER = dt.timedelta(days=1)
"""Staging prefixes older than this are taken as left by a killed export."""

_STAMP = "%Y%m%dT%H%M%SZ"
_STAGING = re.compile(r"^\.tmp-(\d{8}T\d{6}Z)-[0-9a-f]+$")


def _local_files(local_dir: Path) -> dict[str, int]:
  """Relative POSIX path -> size of every file under `local_dir` (object
  stores keep no empty directories, and a SavedModel needs none)."""
  return {p.relative_to(local_dir).as_posix(): p.stat().st_size
          for p in sorted(local_dir.rglob("*")) if p.is_file()}


class RemoteRepository:
  """A TF Serving model repository at an fsspec URL: `<url>/<name>/<N>/`."""

  def __init__(self, url: str) -> None:
    self.url = url.rstrip("/")
    try:
      # A fresh instance: cached ones keep directory listings and endpoints.
      self.fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True)
    except (ImportError, ValueError) as e:  # protocol unknown or not installed
      raise PublishError(f"cannot open the repository {url}: {e}") from None
    self.root = root.rstrip("/")

  def model_url(self, name: str) -> str:
    """The model's base_path for models.config (TF Serving reads gs:// itself)."""
    return f"{self.url}/{name}"

  def _path(self, *parts: str) -> str:
    return posixpath.join(self.root, *parts)

  def _children(self, path: str) -> list[dict]:
    self.fs.invalidate_cache(path)
    try:
      return self.fs.ls(path, detail=True)
    except FileNotFoundError:
      return []

  def versions(self, name: str) -> list[int]:
    """The integer versions listed under the model, ascending."""
    names = (posixpath.basename(c["name"].rstrip("/")) for c in self._children(self._path(name))
             if c["type"] == "directory")
    return sorted(int(n) for n in names if n.isdigit())

  def next_version(self, name: str) -> int:
    existing = self.versions(name)
    return existing[-1] + 1 if existing else 1

  def find_export(self, name: str, fingerprint: str, version: int | None = None) -> str | None:
    """The URL of the version whose manifest has `fingerprint` (only
    `version` when given), or None: `repository.find_export` for object storage."""
    found = matching_version(
        [version] if version is not None else self.versions(name),
        lambda v: self.fs.cat_file(self._path(name, str(v), MANIFEST.as_posix())), fingerprint)
    return None if found is None else f"{self.model_url(name)}/{found}"

  def remove_stale_staging(self, name: str, now: dt.datetime | None = None) -> list[str]:
    """Removes the model's staging prefixes older than `STALE_AFTER`."""
    now = now or dt.datetime.now(dt.timezone.utc)
    removed = []
    for child in self._children(self._path(name)):
      m = _STAGING.match(posixpath.basename(child["name"].rstrip("/")))
      if not m or child["type"] != "directory":
        continue
      started = dt.datetime.strptime(m.group(1), _STAMP).replace(tzinfo=dt.timezone.utc)
      if now - started > STALE_AFTER:
        self.fs.rm(child["name"], recursive=True)
        removed.append(self.fs.unstrip_protocol(child["name"]))
    return removed

  def check_free(self, name: str, version: int) -> None:
    """Fails unless `version` is a valid version number not listed yet."""
    if version < 0 or version in self.versions(name):
      raise PublishError(f"{self.model_url(name)}/{version} exists already (or is not a "
                         f"valid version); versions are never overwritten")

  def _check_sizes(self, prefix: str, expected: dict[str, int]) -> None:
    """Fails unless the objects under `prefix` are exactly `expected`."""
    self.fs.invalidate_cache(prefix)
    found = {posixpath.relpath(path, prefix): info["size"]
             for path, info in self.fs.find(prefix, detail=True).items()}
    if found != expected:
      wrong = sorted(k for k in found.keys() | expected.keys()
                     if found.get(k) != expected.get(k))
      raise PublishError(f"{self.fs.unstrip_protocol(prefix)} does not hold the uploaded "
                         f"files (missing, extra or of another size: {wrong[:5]})")

  def _remove(self, prefix: str) -> None:
    """Best-effort cleanup after a failure; never hides the failure itself."""
    try:
      self.fs.rm(prefix, recursive=True)
    except FileNotFoundError:
      pass
    except Exception as e:  # the original error matters more
      log.warning("could not remove %s: %s", self.fs.unstrip_protocol(prefix), e)

  def publish(self, local_dir: str | os.PathLike, name: str, version: int) -> str:
    """Uploads the finished SavedModel `local_dir` as `<name>/<version>/`
    (the order described in the module docstring); returns its URL.

    Raises:
      PublishError: the version exists (never overwritten), `local_dir` is no
        SavedModel, or the upload did not arrive intact; nothing was published.
      OSError: the object store failed; nothing was published.
    """
    local_dir = Path(local_dir)
    files = _local_files(local_dir)
    if SAVED_MODEL not in files:
      raise PublishError(f"{local_dir} holds no {SAVED_MODEL}")
    for stale in self.remove_stale_staging(name):
      log.info("removed %s, left by an interrupted publish", stale)
    self.check_free(name, version)
    stamp = dt.datetime.now(dt.timezone.utc).strftime(_STAMP)
    staging = self._path(name, f".tmp-{stamp}-{secrets.token_hex(4)}")
    target = self._path(name, str(version))
    rest = [f for f in files if f != SAVED_MODEL]
    copying = False
    try:
      # One file at a time: when one of several parallel uploads fails, the
      # others are cancelled client-side but their requests may still land
      # after the cleanup below, leaving objects under the staging prefix.
      for f in files:
        self.fs.put_file(os.fspath(local_dir / f), f"{staging}/{f}")
      self._check_sizes(staging, files)
      self.check_free(name, version)  # taken meanwhile by another publisher?
      copying = True
      self.fs.copy([f"{staging}/{f}" for f in rest], [f"{target}/{f}" for f in rest])
      self._check_sizes(target, {f: files[f] for f in rest})
      self.fs.copy(f"{staging}/{SAVED_MODEL}", f"{target}/{SAVED_MODEL}")
    except BaseException:
      if copying:
        self._remove(target)
      self._remove(staging)
      raise
    self._remove(staging)
    return f"{self.model_url(name)}/{version}"
