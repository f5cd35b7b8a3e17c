"""Downloads from a local HTTP server: cache, resume, size checks, errors.

The server (http.server in a thread on 127.0.0.1, a free port) serves the
reference checkpoint and an index in the real column format; gs:// is pointed
at it through VIT_SERVING_GCS_BASE, the cache at a temporary directory.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from export import augreg, download, get_config, load_checkpoint
from export.checkpoint import CheckpointError
from export.zoo import __main__ as zoo_cli
from tests.support.augreg_index import index_csv

CKPT = "/vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"


class _Handler(http.server.BaseHTTPRequestHandler):
  server: "_Server"

  def do_GET(self) -> None:  # noqa: N802 (http.server's name)
    srv = self.server
    srv.requests.append((self.path, self.headers.get("Range")))
    fault = srv.faults[self.path].pop(0) if srv.faults.get(self.path) else None
    if isinstance(fault, int):
      self.send_error(fault)
      return
    body = srv.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    start = 0
    m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
    if m and fault != "ignore_range":
      start = int(m.group(1))
      if start >= len(body):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{len(body)}")
        self.end_headers()
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
      self.send_response(200)
    payload = body[start:]
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    if fault == "drop":  # announce everything, send half, hang up
      self.wfile.write(payload[:len(payload) // 2])
      self.close_connection = True
      return
    self.wfile.write(payload)

  def log_message(self, *args) -> None:
    pass


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self) -> None:
    super().__init__(("127.0.0.1", 0), _Handler)
    self.files: dict[str, bytes] = {}
    self.faults: dict[str, list] = {}
    self.requests: list[tuple[str, str | None]] = []

  @property
  def base(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}"

  def hits(self, path: str) -> list[str | None]:
    return [rng for p, rng in self.requests if p == path]


@pytest.fixture
def server(data_dir, tmp_path, monkeypatch):
  srv = _Server()
  srv.files[CKPT] = (data_dir / "vit_a_token.npz").read_bytes()
  srv.files["/vit_models/augreg/index.csv"] = index_csv().encode()
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setenv(download.GCS_BASE_ENV, srv.base)
  yield srv
  srv.shutdown()
  srv.server_close()
  thread.join(timeout=5)


def test_gs_maps_to_public_https(monkeypatch):
  monkeypatch.delenv(download.GCS_BASE_ENV, raising=False)
  assert download.https_url("gs://vit_models/imagenet21k+imagenet2012/ViT-B_16.npz") == \
      "https://storage.googleapis.com/vit_models/imagenet21k%2Bimagenet2012/ViT-B_16.npz"
  assert download.https_url("https://example.com/a.npz") == "https://example.com/a.npz"
  monkeypatch.setenv(download.GCS_BASE_ENV, "http://127.0.0.1:9/")
  assert download.https_url("gs://b/x/y.npz") == "http://127.0.0.1:9/b/x/y.npz"


def test_cache_location(monkeypatch, tmp_path):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
  assert download.cache_path("gs://vit_models/augreg/x.npz") == \
      tmp_path / "vit_models" / "augreg" / "x.npz"
  assert download.cache_path("https://host:8/a/b.npz") == tmp_path / "host:8" / "a" / "b.npz"
  with pytest.raises(download.DownloadError):
    download.cache_path("https://host/../etc/passwd")


def test_download_then_cache_hit(server):
  want = server.files[CKPT]
  path = download.fetch("gs:/" + CKPT, progress=False)
  assert path.read_bytes() == want
  assert path == download.cache_path("gs:/" + CKPT)
  assert download.sha256(path) == hashlib.sha256(want).hexdigest()
  assert path.with_name(path.name + ".sha256").read_text().split()[0] == \
      hashlib.sha256(want).hexdigest()
  assert download.fetch("gs:/" + CKPT) == path
  assert server.hits(CKPT) == [None]  # the second fetch made no request
  assert not path.with_name(path.name + ".part").exists()


def test_cache_hit_is_checked_against_its_sidecar(server):
  path = download.fetch("gs:/" + CKPT, progress=False)
  data = bytearray(path.read_bytes())
  data[-1] ^= 1  # one flipped bit in the cache
  path.write_bytes(bytes(data))
  with pytest.raises(download.DownloadError, match="changed in the cache"):
    download.fetch("gs:/" + CKPT, progress=False)
  assert server.hits(CKPT) == [None]


def test_file_put_in_the_cache_by_hand_gets_a_sidecar(server):
  path = download.cache_path("gs:/" + CKPT)
  path.parent.mkdir(parents=True)
  path.write_bytes(server.files[CKPT])
  assert download.fetch("gs:/" + CKPT, progress=False) == path
  assert path.with_name(path.name + ".sha256").read_text().split()[0] == \
      hashlib.sha256(server.files[CKPT]).hexdigest()
  assert server.hits(CKPT) == []


def test_expected_digest_is_checked_on_download_and_on_cache_hits(server):
  good = hashlib.sha256(server.files[CKPT]).hexdigest()
  bad = "0" * 64
  with pytest.raises(download.DownloadError, match=f"published file has {bad}; it was "
                                                   f"discarded"):
    download.fetch("gs:/" + CKPT, progress=False, expected_sha256=bad)
  path = download.cache_path("gs:/" + CKPT)
  assert sorted(p.name for p in path.parent.iterdir()) == [path.name + ".lock"]
  assert download.fetch("gs:/" + CKPT, progress=False, expected_sha256=good) == path
  with pytest.raises(download.DownloadError, match=f"published with sha256 {bad}"):
    download.fetch("gs:/" + CKPT, progress=False, expected_sha256=bad)


def test_resume_after_dropped_connection(server):
  server.faults[CKPT] = ["drop"]
  path = download.fetch("gs:/" + CKPT, progress=False)
  size = len(server.files[CKPT])
  assert server.hits(CKPT) == [None, f"bytes={size // 2}-"]
  assert path.read_bytes() == server.files[CKPT]


def test_resume_in_a_later_run(server):
  server.faults[CKPT] = ["drop"]
  dest = download.cache_path("gs:/" + CKPT)
  with pytest.raises(download.DownloadError, match="incomplete") as e:
    download.fetch("gs:/" + CKPT, attempts=1, progress=False)
  assert str(dest) in str(e.value) and server.base + CKPT in str(e.value)
  assert not dest.exists()
  part = dest.with_name(dest.name + ".part")
  assert part.stat().st_size == len(server.files[CKPT]) // 2
  assert download.fetch("gs:/" + CKPT, progress=False).read_bytes() == server.files[CKPT]
  assert server.hits(CKPT)[-1] == f"bytes={len(server.files[CKPT]) // 2}-"


def test_server_that_ignores_range_restarts_cleanly(server):
  server.faults[CKPT] = ["drop", "ignore_range"]
  assert download.fetch("gs:/" + CKPT, progress=False).read_bytes() == server.files[CKPT]


def test_part_longer_than_the_file_restarts(server):
  dest = download.cache_path("gs:/" + CKPT)
  dest.parent.mkdir(parents=True)
  dest.with_name(dest.name + ".part").write_bytes(b"x" * (len(server.files[CKPT]) + 10))
  assert download.fetch("gs:/" + CKPT, progress=False).read_bytes() == server.files[CKPT]


def test_complete_part_is_installed_without_a_transfer(server):
  dest = download.cache_path("gs:/" + CKPT)
  dest.parent.mkdir(parents=True)
  dest.with_name(dest.name + ".part").write_bytes(server.files[CKPT])
  assert download.fetch("gs:/" + CKPT, progress=False).read_bytes() == server.files[CKPT]
  assert server.hits(CKPT) == [f"bytes={len(server.files[CKPT])}-"]  # answered 416


def test_truncated_transfer_is_never_installed(server):
  server.faults[CKPT] = ["drop"] * 3
  dest = download.cache_path("gs:/" + CKPT)
  with pytest.raises(download.DownloadError) as e:
    download.fetch("gs:/" + CKPT, attempts=3, progress=False)
  size = len(server.files[CKPT])
  assert f"of {size} bytes" in str(e.value)
  assert not dest.exists()
  assert len(server.hits(CKPT)) == 3


@pytest.mark.parametrize("status", [404, 500])
def test_server_errors_name_url_and_cache_path(server, status):
  server.faults[CKPT] = [status]
  dest = download.cache_path("gs:/" + CKPT)
  with pytest.raises(download.DownloadError) as e:
    download.fetch("gs:/" + CKPT, progress=False)
  message = str(e.value)
  assert f"HTTP {status}" in message
  assert server.base + CKPT in message
  assert f"put it at {dest}" in message
  assert not dest.exists()


def test_connection_refused_names_url_and_cache_path(tmp_path, monkeypatch):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv(download.GCS_BASE_ENV, f"http://127.0.0.1:{port}")
  with pytest.raises(download.DownloadError) as e:
    download.fetch("gs://vit_models/augreg/x.npz", progress=False)
  message = str(e.value)
  assert f"http://127.0.0.1:{port}/vit_models/augreg/x.npz" in message
  assert str(tmp_path / "vit_models" / "augreg" / "x.npz") in message
  assert "cannot reach" in message


def test_is_remote_means_a_url_for_sources_and_repositories_alike():
  for url in ("s3://bucket/models", "gs://b", "https://host/x.npz", "memory://m"):
    assert download.is_remote(url)
  for path in ("models", "/tmp/models", "B/16", "R26+S/32", Path("/tmp/models")):
    assert not download.is_remote(path)


def test_url_of_another_scheme_is_one_clear_error(tmp_path):
  with pytest.raises(download.DownloadError, match="s3://b/x.npz: checkpoints are read "
                     "from local files and http://, https://, gs:// URLs"):
    download.fetch("s3://b/x.npz")


def test_local_paths_pass_through(data_dir):
  assert download.fetch(str(data_dir / "vit_a_token.npz")) == data_dir / "vit_a_token.npz"
  with pytest.raises(FileNotFoundError, match="no such file"):
    download.fetch(str(data_dir / "missing.npz"))


def test_load_checkpoint_over_gs(server, data_dir, reference_manifest):
  cfg = get_config(reference_manifest["vit_a_token"]["config"])
  remote = load_checkpoint("gs:/" + CKPT, cfg)
  local = load_checkpoint(str(data_dir / "vit_a_token.npz"), cfg)
  np.testing.assert_array_equal(remote["head"]["kernel"], local["head"]["kernel"])


def test_not_an_npz_surfaces_as_checkpoint_error(server, reference_manifest):
  server.files[CKPT] = b"<html>Bucket listing, not a checkpoint</html>"
  cfg = get_config(reference_manifest["vit_a_token"]["config"])
  with pytest.raises(CheckpointError, match="not a readable .npz"):
    load_checkpoint("gs:/" + CKPT, cfg)


def test_index_over_http_and_select_cli(server, capsys):
  rows = augreg.read_index("gs://vit_models/augreg/index.csv")
  assert [r["name"] for r in augreg.select_best(rows)] == ["B/16", "R26+S/32", "S/16", "B/32"]
  assert zoo_cli.main(["select", "--index", "gs://vit_models/augreg/index.csv"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].split()[:3] == ["name", "adapt_final_test", "adapt_final_val"]
  assert [line.split()[0] for line in out[1:]] == ["B/16", "R26+S/32", "S/16", "B/32"]
  assert server.hits("/vit_models/augreg/index.csv") == [None]  # second read: cached
