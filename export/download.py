"""Checkpoint sources -> local files: download once, cache, verify.

Published checkpoints are 40 MiB to 1.3 GiB and live in public GCS buckets, so
a source may be a local path, an http(s):// URL, or gs://bucket/path (read
over public HTTPS, no GCS client or credentials). A download goes to a `.part`
file, resumes with an HTTP Range request when the connection drops, is checked
against the size the server announced, and only then is renamed into place:
the cache never holds a file that looks complete but is not. The sha256 of
every downloaded file is kept next to it (`<file>.sha256`) for the export
manifest, and every later cache hit is checked against it, so a file that
changed in the cache (disk corruption, a bad copy) is not exported; a file put
in the cache by hand gets its sidecar on first use. Where the caller knows the
published digest (`export/data/seed_models.json`), the file must match that
too. Every failure names the URL and the exact cache path where the file can
be put by hand (for machines without network access).

Environment:
  VIT_SERVING_CACHE     cache directory (default ~/.cache/vit-serving)
  VIT_SERVING_GCS_BASE  base URL that gs:// maps to
                        (default https://storage.googleapis.com)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator

from tqdm import tqdm

CACHE_ENV = "VIT_SERVING_CACHE"
GCS_BASE_ENV = "VIT_SERVING_GCS_BASE"
DEFAULT_GCS_BASE = "https://storage.googleapis.com"
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
  """A remote source could not be fetched; the message says what to do."""


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEMES = ("http", "https", "gs")
"""The URL schemes a checkpoint is downloaded from."""


def is_remote(location: str | os.PathLike) -> bool:
  """True for a URL (`gs://...`, `s3://...`, `https://...`), False for a local
  path: the one test for checkpoint sources and model repositories alike."""
  return isinstance(location, str) and bool(_URL.match(location))


def cache_dir() -> Path:
  return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vit-serving")


def https_url(src: str) -> str:
  """The URL a source is read from: gs://bucket/path becomes the bucket's
  public HTTPS address; http(s) URLs are returned unchanged."""
  parts = urllib.parse.urlsplit(src)
  if parts.scheme != "gs":
    return src
  base = (os.environ.get(GCS_BASE_ENV) or DEFAULT_GCS_BASE).rstrip("/")
  return f"{base}/{parts.netloc}/{urllib.parse.quote(parts.path.lstrip('/'), safe='/')}"


def cache_path(src: str) -> Path:
  """Where a remote source is cached: <cache>/<bucket or host>/<path>."""
  parts = urllib.parse.urlsplit(src)
  segments = [parts.netloc] + urllib.parse.unquote(parts.path).split("/")
  segments = [s for s in segments if s]
  if not segments[1:] or any(s in (".", "..") for s in segments):
    raise DownloadError(f"{src}: not a file URL (expected scheme://host/path/file)")
  return cache_dir().joinpath(*segments)


def fetch(src: str, *, attempts: int = 3, progress: bool = True,
          expected_sha256: str | None = None) -> Path:
  """A local path holding `src`'s bytes.

  Local paths are returned as they are. Remote sources are served from the
  cache when present (no request; the file is checked against its sidecar
  digest), else downloaded; an interrupted transfer is resumed up to
  `attempts` times in this call, and a later call resumes what an earlier one
  left in `<cache path>.part`. `expected_sha256`, when known, must match too.

  Raises:
    FileNotFoundError: a local path that does not exist.
    DownloadError: the server or network failed, the size does not match, or
      the digest does not.
  """
  if not is_remote(src):
    if os.path.exists(src):
      return Path(src)
    raise FileNotFoundError(f"{src}: no such file")
  if urllib.parse.urlsplit(src).scheme not in _SCHEMES:
    raise DownloadError(f"{src}: checkpoints are read from local files and "
                        f"{', '.join(s + '://' for s in _SCHEMES)} URLs")
  dest = cache_path(src)
  dest.parent.mkdir(parents=True, exist_ok=True)
  with _locked(dest):  # also keeps a concurrent download from racing the check
    if dest.is_file():
      _check_cached(src, dest, expected_sha256)
    else:
      _download(https_url(src), dest, attempts=attempts, progress=progress,
                expected_sha256=expected_sha256)
  return dest


def sha256(path: str | os.PathLike) -> str:
  """The hex sha256 of a file; read from the `.sha256` sidecar that a download
  leaves when it is at least as new as the file, else computed."""
  path = Path(path)
  sidecar = _sidecar(path)
  if sidecar.is_file() and sidecar.stat().st_mtime >= path.stat().st_mtime:
    return sidecar.read_text().split()[0]
  return _hash_file(path)


def _sidecar(path: Path) -> Path:
  return path.with_name(path.name + ".sha256")


def _check_cached(src: str, dest: Path, expected: str | None) -> None:
  """Verifies a cache hit against the digest recorded when it was downloaded
  (recording one for a file put there by hand) and against `expected`."""
  actual = _hash_file(dest)
  sidecar = _sidecar(dest)
  if sidecar.is_file():
    recorded = sidecar.read_text().split()[0]
    if recorded != actual:
      raise DownloadError(
          f"the cached {dest} has sha256 {actual}, but {recorded} was recorded when it "
          f"was downloaded ({sidecar}): the file changed in the cache. Delete both "
          f"files to download it again from {https_url(src)}")
  if expected is not None and actual != expected.lower():
    raise DownloadError(
        f"the cached {dest} has sha256 {actual}, but {src} is published with sha256 "
        f"{expected}: not the published file. Delete it to download it again. "
        f"{_manual_hint(https_url(src), dest)}")
  if not sidecar.is_file():
    sidecar.write_text(f"{actual}  {dest.name}\n")


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
  """Serialises concurrent downloads of one file (two exports of one model)."""
  with open(dest.with_name(dest.name + ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _manual_hint(url: str, dest: Path) -> str:
  return (f"To install it by hand, download {url} on a machine with network access "
          f"and put it at {dest} (the cache path; set {CACHE_ENV} to move the cache).")


def _download(url: str, dest: Path, *, attempts: int, progress: bool,
              expected_sha256: str | None) -> None:
  part = dest.with_name(dest.name + ".part")
  total = None
  for _ in range(max(1, attempts)):
    total = _transfer(url, dest, part, progress=progress)
    if total is None or part.stat().st_size == total:
      break
  have = part.stat().st_size
  if total is not None and have != total:
    raise DownloadError(
        f"download of {url} is incomplete: got {have} of {total} bytes after "
        f"{attempts} attempt(s); the partial file is kept at {part} and the next "
        f"run resumes it. {_manual_hint(url, dest)}")
  digest = _hash_file(part)
  if expected_sha256 is not None and digest != expected_sha256.lower():
    part.unlink()  # complete but wrong: resuming it cannot help
    raise DownloadError(f"the download of {url} has sha256 {digest}, but the published "
                        f"file has {expected_sha256}; it was discarded. "
                        f"{_manual_hint(url, dest)}")
  _sidecar(dest).write_text(f"{digest}  {dest.name}\n")
  os.replace(part, dest)


def _transfer(url: str, dest: Path, part: Path, *, progress: bool) -> int | None:
  """One request: appends to `part` (resuming from its size) and returns the
  full size the server announced, or None when it announced none."""
  offset = part.stat().st_size if part.exists() else 0
  request = urllib.request.Request(url, headers={"User-Agent": "vit-serving"})
  if offset:
    request.add_header("Range", f"bytes={offset}-")
  try:
    response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:  # nothing left after `offset`
      m = re.fullmatch(r"bytes \*/(\d+)", (e.headers.get("Content-Range") or "").strip())
      if m and int(m.group(1)) == offset:
        return offset  # a complete .part whose rename was interrupted
      part.unlink()  # longer than the file: not a prefix we can extend
      return _transfer(url, dest, part, progress=progress)
    raise DownloadError(f"cannot download {url}: the server answered HTTP {e.code} "
                        f"{e.reason}. {_manual_hint(url, dest)}") from None
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(f"cannot reach {url} ({reason}); offline? "
                        f"{_manual_hint(url, dest)}") from None
  with response:
    total = _announced_total(response, offset)
    if response.status != 206:
      offset = 0  # the server ignored the Range header: start over
    with open(part, "r+b" if offset else "wb") as out:
      out.seek(offset)
      out.truncate()
      _copy(response, out, total=total, initial=offset, name=dest.name, progress=progress)
  return total


def _announced_total(response: http.client.HTTPResponse, offset: int) -> int | None:
  if response.status == 206:
    m = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not m or int(m.group(1)) != offset:
      raise DownloadError(f"{response.url}: unusable Content-Range "
                          f"{response.headers.get('Content-Range')!r} for a resume at {offset}")
    return None if m.group(3) == "*" else int(m.group(3))
  length = response.headers.get("Content-Length")
  return int(length) if length is not None else None


def _copy(src: BinaryIO, out: BinaryIO, *, total: int | None, initial: int, name: str,
          progress: bool) -> None:
  """Streams the body; a dropped connection just ends the copy (the caller
  compares sizes and resumes)."""
  with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
            desc=name, file=sys.stderr, disable=not progress, leave=False) as bar:
    while True:
      try:
        block = src.read(_CHUNK)
      except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
        if isinstance(e, http.client.IncompleteRead) and e.partial:
          out.write(e.partial)
        return
      if not block:
        return
      out.write(block)
      bar.update(len(block))


def _hash_file(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()
