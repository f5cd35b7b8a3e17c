"""Publishing into an object-storage repository, against a local stand-in: a
moto S3 server on 127.0.0.1 reached through fsspec/s3fs, configured only by
the standard AWS environment variables (as a user would).

One real export (`python -m export --repo s3://...`, in-process) is shared by
the module; the other publishes reuse its files. Failures are injected into
s3fs's per-file upload and server-side copy coroutines, so they strike in the
middle of a multi-file transfer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

import export
from export import __main__ as cli, remote, repository
from export.repository import PublishError
from moto import server as moto_server


BUCKET = "model-bucket"
URL = f"s3://{BUCKET}/repo"
NAME = "vit"
EXPECTED_FILES = {"saved_model.pb", "fingerprint.pb", "variables/variables.index",
                  "variables/variables.data-00000-of-00001", "assets/labels.txt",
                  "assets.extra/tf_serving_warmup_requests",
                  repository.MANIFEST.as_posix()}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
  """A moto S3 server on 127.0.0.1 with one bucket; the AWS environment
  points at it (and away from any real configuration) for the module."""
  logging.getLogger("werkzeug").setLevel(logging.ERROR)
  port = free_port()
  server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
  server.start()
  nowhere = str(tmp_path_factory.mktemp("aws") / "none")
  with pytest.MonkeyPatch.context() as mp:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_CONFIG_FILE": nowhere, "AWS_SHARED_CREDENTIALS_FILE": nowhere,
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
      mp.setenv(key, value)
    mp.delenv("AWS_PROFILE", raising=False)
    mp.delenv("AWS_SESSION_TOKEN", raising=False)
    remote.RemoteRepository(URL).fs.mkdir(BUCKET)
    try:
      yield
    finally:
      server.stop()


@pytest.fixture(scope="module")
def published(s3, tmp_path_factory, data_dir, reference_manifest):
  """`python -m export --repo s3://...` once; returns (stdout, the local
  SavedModel directory that was uploaded, the models.config path)."""
  root = tmp_path_factory.mktemp("remote_export")
  (root / "vit.json").write_text(json.dumps(reference_manifest["vit_a_token"]["config"]))
  kept = root / "uploaded"
  original = remote.RemoteRepository.publish

  def keep_a_copy(self, local_dir, name, version):
    shutil.copytree(local_dir, kept)
    return original(self, local_dir, name, version)

  logger = logging.getLogger("export")
  saved = (list(logger.handlers), logger.level, logger.propagate)
  out = io.StringIO()
  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
    mp.setattr(remote.RemoteRepository, "publish", keep_a_copy)
    status = cli.main(["--checkpoint", str(data_dir / "vit_a_token.npz"), "--name", NAME,
                       "--repo", URL, "--config", str(root / "vit.json"),
                       "--model-config", str(root / "models.config")])
  logger.handlers[:], logger.level, logger.propagate = saved
  assert status == 0
  return out.getvalue().strip(), kept, root / "models.config"


@pytest.fixture
def store(s3) -> remote.RemoteRepository:
  return remote.RemoteRepository(URL)


def children(store: remote.RemoteRepository, *parts: str) -> list[str]:
  path = "/".join([store.root, *parts])
  store.fs.invalidate_cache()
  if not store.fs.exists(path):
    return []
  return sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(path, detail=False))


def remote_files(store: remote.RemoteRepository, version: int) -> dict[str, bytes]:
  prefix = f"{store.root}/{NAME}/{version}/"
  store.fs.invalidate_cache()
  return {p[len(prefix):]: store.fs.cat_file(p) for p in store.fs.find(prefix)}


def local_files(directory: Path) -> dict[str, bytes]:
  return {p.relative_to(directory).as_posix(): p.read_bytes()
          for p in directory.rglob("*") if p.is_file()}


def test_unknown_protocol_is_a_publish_error():
  with pytest.raises(PublishError, match="nosuchfs"):
    remote.RemoteRepository("nosuchfs://bucket/models")


def test_the_same_export_again_is_found_not_published_twice(published, store, data_dir,
                                                            reference_manifest):
  """The exporter's one "already published?" rule (the manifest's fingerprint)
  holds for object storage too: nothing is read back but the manifests."""
  stdout, _, _ = published
  before = store.versions(NAME)
  again = export.export_checkpoint(str(data_dir / "vit_a_token.npz"), NAME, URL,
                                   config=reference_manifest["vit_a_token"]["config"],
                                   model_config_file=None)
  assert again == stdout
  assert store.versions(NAME) == before
  assert store.find_export(NAME, "no such fingerprint") is None


def test_cli_publishes_a_complete_version(published, store):
  stdout, kept, config_path = published
  assert stdout == f"{URL}/{NAME}/1"
  # Version 1 is the CLI's (later tests in this module may add others); its
  # staging prefix is gone.
  assert "1" in children(store, NAME)
  assert not [c for c in children(store, NAME) if c.startswith(".tmp-")]
  files = remote_files(store, 1)
  assert set(files) == EXPECTED_FILES == set(local_files(kept))
  manifest = json.loads(files[repository.MANIFEST.as_posix()])
  assert (manifest["name"], manifest["version"]) == (NAME, 1)
  assert manifest["verification"]["max_abs_diff"] <= manifest["verification"]["tolerance"]
  config = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
  (entry,) = config.model_config_list.config
  assert (entry.name, entry.base_path, entry.model_platform) == \
      (NAME, f"{URL}/{NAME}", "tensorflow")


def test_published_files_are_the_export_byte_for_byte_and_serve(published, store, tmp_path,
                                                                data_dir):
  _, kept, _ = published
  files = remote_files(store, 1)
  assert files == local_files(kept)
  for rel, data in files.items():
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(data)
  ref = np.load(data_dir / "vit_a_token_outputs.npz")
  out = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](
      images=tf.constant(ref["inputs"]))
  np.testing.assert_allclose(out["logits"], ref["logits"], atol=5e-5, rtol=5e-5)


def test_next_publish_gets_next_version_saved_model_last(published, store, monkeypatch):
  _, kept, _ = published
  before = store.versions(NAME)
  version = store.next_version(NAME)
  assert version == before[-1] + 1
  copied = []
  original = store.fs._cp_file

  async def record(path1, path2, **kwargs):
    copied.append(path2.rsplit(f"/{NAME}/{version}/", 1)[-1])
    return await original(path1, path2, **kwargs)
  monkeypatch.setattr(store.fs, "_cp_file", record)
  assert store.publish(kept, NAME, version) == f"{URL}/{NAME}/{version}"
  assert sorted(copied) == sorted(EXPECTED_FILES) and copied[-1] == "saved_model.pb"
  assert store.versions(NAME) == before + [version]
  assert remote_files(store, version) == local_files(kept)
  assert not [c for c in children(store, NAME) if c.startswith(".tmp-")]


def test_existing_versions_are_never_overwritten(published, store, tmp_path,
                                                 reference_manifest):
  _, kept, _ = published
  first = remote_files(store, 1)
  with pytest.raises(PublishError, match="holds no saved_model.pb"):
    store.publish(kept / "variables", NAME, store.next_version(NAME))
  with pytest.raises(PublishError, match="exists already"):
    store.publish(kept, NAME, 1)
  with pytest.raises(PublishError, match="exists already"):  # before reading anything
    export.export_checkpoint(str(tmp_path / "missing.npz"), NAME, URL, version=1,
                             config=reference_manifest["vit_a_token"]["config"],
                             model_config_file=None)
  assert remote_files(store, 1) == first
  assert not [c for c in children(store, NAME) if c.startswith(".tmp-")]


@pytest.mark.parametrize("step", ["put_file", "_cp_file"])
def test_failure_mid_transfer_leaves_no_version(step, published, store, monkeypatch):
  """`put_file` fails during the upload to the staging prefix, `_cp_file`
  (what fsspec's bulk copy awaits per file) during the server-side copy into
  <N>/: the third file arrives, then its transfer reports an error. Uploads go
  one at a time, so no request is still in flight when the cleanup runs
  (parallel ones could land after it)."""
  _, kept, _ = published
  before = children(store, NAME)
  calls = []
  original = getattr(store.fs, step)

  def third_call(path2: str) -> bool:
    calls.append(path2)
    return len(calls) == 3

  def fail_third_upload(path1, path2, **kwargs):
    third = third_call(path2)
    result = original(path1, path2, **kwargs)
    if third:
      raise OSError("injected: connection reset")
    return result

  async def fail_third_copy(path1, path2, **kwargs):
    third = third_call(path2)
    result = await original(path1, path2, **kwargs)
    if third:
      raise OSError("injected: connection reset")
    return result
  fail_third = fail_third_upload if step == "put_file" else fail_third_copy
  monkeypatch.setattr(store.fs, step, fail_third)
  with pytest.raises(OSError, match="injected"):
    store.publish(kept, NAME, store.next_version(NAME))
  assert len(calls) == 3 if step == "put_file" else len(calls) >= 3  # no upload after it
  assert children(store, NAME) == before  # no new version, no staging prefix
  assert not [c for c in before if c.startswith(".tmp-")]


def test_stale_staging_prefixes_are_removed(published, store):
  now = dt.datetime.now(dt.timezone.utc)
  old = f".tmp-{(now - dt.timedelta(days=2)).strftime('%Y%m%dT%H%M%SZ')}-0a1b"
  recent = f".tmp-{now.strftime('%Y%m%dT%H%M%SZ')}-2c3d"
  for prefix in (old, recent):
    store.fs.pipe_file(f"{store.root}/{NAME}/{prefix}/saved_model.pb", b"partial")
  assert store.remove_stale_staging(NAME) == [f"s3://{BUCKET}/repo/{NAME}/{old}"]
  assert old not in children(store, NAME) and recent in children(store, NAME)
  store.fs.rm(f"{store.root}/{NAME}/{recent}", recursive=True)
