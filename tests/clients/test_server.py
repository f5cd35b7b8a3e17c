"""The clients against the embedded server serving a real export.

tests/data/vit_a_token.npz, exported once per session (tests/conftest.py),
is version 1 and a copy of it version 2; models.config labels them `stable`
and `canary`. Every result is checked against the SavedModel loaded in this
process, and gRPC against REST.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from clients import (NO_RETRY, ClientError, GrpcClient, RestClient, RoutedClient, Router,
                     label_arms, preprocessing)
from tests.support.tiny_models import ROOT, ServerProcess, free_port

LABELS = [f"class_{i}" for i in range(10)]
SIZE = 32


@pytest.fixture(scope="module")
def repo(tmp_path_factory, vit_a_token_version):
  root = tmp_path_factory.mktemp("client_repo")
  # Exported once per session (tests/conftest.py): 32 px, labels class_0..9.
  version_1 = vit_a_token_version(root / "models" / "vit" / "1")
  shutil.copytree(version_1, version_1.parent / "2")
  config = root / "models.config"
  config.write_text(f"""model_config_list {{
  config {{
    name: "vit"
    base_path: "{version_1.parent}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
""")
  return root


@pytest.fixture(scope="module")
def server(repo):
  process = ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                           f"--model_config_file={repo / 'models.config'}",
                           "--allow_version_labels_for_unavailable_models",
                           "--xla_cpu_compilation_enabled=true"])
  yield process
  process.stop()


@pytest.fixture(scope="module")
def grpc_client(server):
  with GrpcClient(server.grpc_address, timeout=60, retry=NO_RETRY) as client:
    yield client


@pytest.fixture(scope="module")
def rest_client(server):
  with RestClient(server.rest_address, timeout=60, retry=NO_RETRY) as client:
    yield client


@pytest.fixture(scope="module")
def saved_model(repo):
  return tf.saved_model.load(str(repo / "models" / "vit" / "1"))


def _photo(height: int, width: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 / (width - 1), y * 255 / (height - 1), (x * y) % 97 * 2.6], axis=-1)
  return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def encoded():
  """Five images of assorted sizes and formats (JPEG and PNG)."""
  shapes = [(64, 48), (32, 32), (20, 90), (100, 100), (33, 31)]
  return [_encode(_photo(h, w, seed), "JPEG" if seed % 2 else "PNG")
          for seed, (h, w) in enumerate(shapes)]


def _reference(saved_model, signature: str, **inputs) -> dict[str, np.ndarray]:
  outputs = saved_model.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
  return {k: v.numpy() for k, v in outputs.items()}


def _assert_same(actual: dict, expected: dict) -> None:
  assert sorted(actual) == sorted(expected)
  for name, value in expected.items():
    if value.dtype == object:
      assert actual[name].tolist() == value.tolist(), name
    else:
      assert actual[name].dtype == value.dtype, name
      np.testing.assert_allclose(actual[name], value, rtol=0, atol=1e-5, err_msg=name)


def test_every_signature_equals_the_saved_model_on_both_transports(
    grpc_client, rest_client, saved_model, encoded):
  images = preprocessing.preprocess_batch(encoded, SIZE)
  pixels = np.stack([preprocessing.resize_uint8(e, SIZE) for e in encoded])
  byte_array = np.array(encoded, dtype=object)
  expected = {"serving_default": _reference(saved_model, "serving_default", images=images),
              "predict_uint8": _reference(saved_model, "predict_uint8", images=pixels),
              "predict_bytes": _reference(saved_model, "predict_bytes", image_bytes=byte_array)}
  for client in (grpc_client, rest_client):
    _assert_same(client.predict_images("vit", images).outputs, expected["serving_default"])
    _assert_same(client.predict_pixels("vit", pixels).outputs, expected["predict_uint8"])
    _assert_same(client.predict_encoded("vit", encoded).outputs, expected["predict_bytes"])
  # Client-side preprocessing reproduces the server's: same answer either way.
  _assert_same(expected["serving_default"], expected["predict_bytes"])


def test_top_k_is_decoded_with_labels(grpc_client, rest_client, encoded):
  via_grpc = grpc_client.predict_encoded("vit", encoded).top_k(3)
  via_rest = rest_client.predict_encoded("vit", encoded).top_k(3)
  assert [[(t.class_id, t.label) for t in row] for row in via_grpc] == \
         [[(t.class_id, t.label) for t in row] for row in via_rest]
  for row, rest_row in zip(via_grpc, via_rest):
    assert all(t.label == LABELS[t.class_id] for t in row)
    assert [t.score for t in row] == sorted((t.score for t in row), reverse=True)
    np.testing.assert_allclose([t.score for t in row], [t.score for t in rest_row], atol=1e-6)


def test_answering_version_is_reported(grpc_client, rest_client, server, encoded):
  assert grpc_client.predict_encoded("vit", encoded[:1], label="stable").model_version == 1
  assert grpc_client.predict_encoded("vit", encoded[:1], label="canary").model_version == 2
  assert grpc_client.predict_encoded("vit", encoded[:1], version=1).model_version == 1
  assert grpc_client.predict_encoded("vit", encoded[:1]).model_version == 2  # latest
  # REST's predict response has no version: known only when pinned or resolved.
  assert rest_client.predict_encoded("vit", encoded[:1], version=1).model_version == 1
  assert rest_client.predict_encoded("vit", encoded[:1], label="canary").model_version is None
  with RestClient(server.rest_address, resolve_versions=True) as resolving:
    assert resolving.predict_encoded("vit", encoded[:1], label="stable").model_version == 1
    assert resolving.predict_encoded("vit", encoded[:1]).model_version == 2


def test_metadata_and_status_agree_across_transports(grpc_client, rest_client):
  for ref in ({}, {"version": 1}, {"label": "canary"}):
    via_grpc, via_rest = grpc_client.metadata("vit", **ref), rest_client.metadata("vit", **ref)
    assert via_grpc == via_rest
    assert via_grpc.image_size() == SIZE
  signatures = grpc_client.metadata("vit").signatures
  assert set(signatures) >= {"serving_default", "predict_uint8", "predict_bytes"}
  assert signatures["predict_bytes"].inputs["image_bytes"].dtype == "DT_STRING"
  assert signatures["serving_default"].outputs["top_k_classes"].dtype == "DT_INT32"
  assert grpc_client.metadata("vit", label="stable").version == 1
  for client in (grpc_client, rest_client):
    assert [(s.version, s.state) for s in client.status("vit")] == [(2, "AVAILABLE"),
                                                                     (1, "AVAILABLE")]
    assert [s.version for s in client.status("vit", version=1)] == [1]


def test_bad_requests_give_clear_client_errors(grpc_client, rest_client):
  wrong_size = np.zeros((1, 16, 16, 3), np.float32)
  for client in (grpc_client, rest_client):
    with pytest.raises(ClientError) as error:
      client.predict_images("vit", wrong_size)
    assert error.value.code == "INVALID_ARGUMENT" and error.value.attempts == 1
    assert error.value.message and "serving_default" in str(error.value)
    with pytest.raises(ClientError) as error:
      client.predict_images("nope", wrong_size)
    assert error.value.code == "NOT_FOUND" and "model 'nope'" in str(error.value)
    with pytest.raises(ClientError) as error:
      client.metadata("vit", version=9)
    assert error.value.code == "NOT_FOUND" and "version 9" in str(error.value)
  with pytest.raises(TypeError, match="uint8"):
    grpc_client.predict_pixels("vit", wrong_size)


def test_large_inputs_are_split_and_kept_in_order(grpc_client, rest_client, encoded):
  many = encoded * 3  # 15 images
  whole = grpc_client.predict_encoded("vit", many, batch_size=64)
  for client in (grpc_client, rest_client):
    split = client.predict_encoded("vit", many, batch_size=4, progress=False)
    assert len(split.row_versions) == 15
    np.testing.assert_allclose(split["logits"], whole["logits"], atol=1e-5)
  assert whole.row_versions == (2,) * 15
  np.testing.assert_allclose(whole["logits"][5:10], whole["logits"][:5], atol=1e-5)


def test_routed_predictions_stick_to_their_arm(grpc_client, encoded):
  router = Router(label_arms({"stable": 80, "canary": 20}), salt="test")
  routed = RoutedClient(grpc_client, "vit", router)
  answered = {}
  for i in range(40):
    prediction = routed.predict_encoded(encoded[:1], key=f"user-{i}")
    assert prediction.model_version == {"stable": 1, "canary": 2}[prediction.arm]
    answered[f"user-{i}"] = prediction.arm
  again = [routed.predict_encoded(encoded[:1], key=k).arm for k in list(answered)[:10]]
  assert again == list(answered.values())[:10]
  assert sum(router.counts().values()) == 50
  assert set(answered.values()) == {"stable", "canary"}


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "clients", *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=120)


def test_cli_predict_json_and_text(server, grpc_client, encoded, tmp_path):
  folder = tmp_path / "images"
  (folder / "nested").mkdir(parents=True)
  paths = []
  for i, data in enumerate(encoded[:3]):
    suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
    path = (folder / "nested" if i == 2 else folder) / f"img{i}{suffix}"
    path.write_bytes(data)
    paths.append(path)
  (folder / "notes.txt").write_text("not an image")
  expected = grpc_client.predict_encoded("vit", paths, label="canary").top_k(2)

  done = _cli("predict", "--server", server.grpc_address, "--model", "vit", "--label", "canary",
              "--top-k", "2", "--json", str(folder))
  assert done.returncode == 0, done.stderr
  listed = json.loads(done.stdout)
  assert [item["image"] for item in listed] == [str(p) for p in sorted(paths)]
  by_path = dict(zip(map(str, paths), expected))
  for item in listed:
    best = by_path[item["image"]]
    assert [(t["class"], t["label"]) for t in item["top_k"]] == [
        (b.class_id, b.label) for b in best]
    np.testing.assert_allclose([t["score"] for t in item["top_k"]], [b.score for b in best],
                               atol=1e-6)

  done = _cli("predict", "--server", server.rest_address, "--rest", "--model", "vit",
              "--version", "1", str(paths[0]))
  assert done.returncode == 0, done.stderr
  assert "vit version 1 via http://" in done.stdout
  assert LABELS[expected[0][0].class_id] in done.stdout


def test_cli_metadata_status_and_errors(server):
  done = _cli("status", "--server", server.grpc_address, "--model", "vit")
  assert done.returncode == 0 and "version 2  AVAILABLE" in done.stdout
  done = _cli("metadata", "--server", server.rest_address, "--rest", "--model", "vit",
              "--label", "stable")
  assert done.returncode == 0 and json.loads(done.stdout)["version"] == 1
  done = _cli("predict", "--server", server.grpc_address, "--model", "nope",
              str(ROOT / "README.md"))
  assert done.returncode == 1 and "NOT_FOUND" in done.stderr and "model 'nope'" in done.stderr
  done = _cli("predict", "--server", server.grpc_address, "--model", "vit", "/no/such/file")
  assert done.returncode == 2 and "no such file" in done.stderr


def test_output_filter_returns_only_the_outputs_asked_for(grpc_client, rest_client, encoded):
  top = ["top_k_classes", "top_k_scores"]
  whole = grpc_client.predict_encoded("vit", encoded)
  for client in (grpc_client, rest_client):
    filtered = client.predict_encoded("vit", encoded, output_filter=top)
    assert sorted(filtered.outputs) == top
    np.testing.assert_allclose(filtered["top_k_scores"], whole["top_k_scores"], atol=1e-6)
    with pytest.raises(ClientError) as error:
      client.predict_encoded("vit", encoded, output_filter=["nope"])
    assert error.value.code == "INVALID_ARGUMENT"


def test_health_and_readiness_on_both_transports(grpc_client, rest_client):
  for client in (grpc_client, rest_client):
    assert client.is_server_live()
    assert client.is_model_ready("vit") and client.is_model_ready("vit", version=1)
    assert client.is_model_ready("vit", label="canary")
    assert not client.is_model_ready("vit", version=9)
    assert not client.is_model_ready("vit", label="nope")
    assert not client.is_model_ready("nope")
  done = _cli("health", "--server", grpc_client.target, "--model", "vit", "--label", "stable")
  assert done.returncode == 0 and "live" in done.stdout and "ready" in done.stdout
  done = _cli("health", "--server", rest_client.target, "--rest", "--model", "vit",
              "--version", "9")
  assert done.returncode == 1 and "not ready" in done.stdout


def test_async_clients_give_the_sync_results(server, grpc_client, encoded):
  from clients.aio import AsyncGrpcClient, AsyncRestClient
  expected = grpc_client.predict_encoded("vit", encoded, label="stable")

  async def run():
    async with AsyncGrpcClient(server.grpc_address, retry=NO_RETRY) as g, \
        AsyncRestClient(server.rest_address, retry=NO_RETRY) as r:
      calls = [client.predict_encoded("vit", [image], label="stable")
               for client in (g, r) for image in encoded]
      results = await asyncio.gather(*calls)
      ready = await asyncio.gather(g.is_model_ready("vit", label="canary"),
                                   r.is_model_ready("vit", version=9), g.is_server_live())
      metadata = await asyncio.gather(g.metadata("vit"), r.metadata("vit"))
      return results, ready, metadata

  results, ready, metadata = asyncio.run(run())
  n = len(encoded)
  for transport in range(2):
    logits = np.concatenate([p["logits"] for p in results[transport * n:(transport + 1) * n]])
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-5)
  assert [p.model_version for p in results[:n]] == [1] * n
  assert ready == [True, False, True]
  assert metadata[0] == metadata[1] == grpc_client.metadata("vit")


def test_cli_reports_bad_images_and_still_predicts_the_rest(server, grpc_client, encoded,
                                                             tmp_path):
  folder = tmp_path / "mixed"
  folder.mkdir()
  webp = io.BytesIO()
  Image.fromarray(_photo(40, 30, 9)).save(webp, format="WEBP")
  (folder / "a.webp").write_bytes(webp.getvalue())
  (folder / "b.jpg").write_bytes(encoded[1])
  (folder / "c.png").write_bytes(b"not a png at all")
  (folder / "d.png").write_bytes(encoded[0])
  expected = grpc_client.predict_encoded("vit", [webp.getvalue(), encoded[1], encoded[0]])

  done = _cli("predict", "--server", server.grpc_address, "--model", "vit", "--top-k", "1",
              "--batch-size", "4", "--json", str(folder))
  assert done.returncode == 1
  assert f"{folder / 'c.png'}:" in done.stderr and "Unknown image file format" in done.stderr
  listed = {Path(item["image"]).name: item for item in json.loads(done.stdout)}
  assert sorted(listed) == ["a.webp", "b.jpg", "c.png", "d.png"] and listed["c.png"]["error"]
  classes = [listed[n]["top_k"][0]["class"] for n in ("a.webp", "b.jpg", "d.png")]
  assert classes == [row[0].class_id for row in expected.top_k(1)]

  done = _cli("predict", "--server", server.grpc_address, "--model", "vit", "--top-k", "2",
              str(folder / "b.jpg"), str(folder / "c.png"))
  assert done.returncode == 1
  lines = done.stdout.splitlines()
  assert lines[1].split() == ["#", "score", "class", "label"]
  assert lines[2] == str(folder / "b.jpg") and "failed" in done.stdout
  done = _cli("predict", "--server", server.grpc_address, "--model", "vit", "--batch-size",
              "0", str(folder))
  assert done.returncode == 2 and "--batch-size: must be at least 1" in done.stderr


def test_cli_perf_sweeps_concurrency_with_json_and_plot(server, encoded, tmp_path):
  image = tmp_path / "one.jpg"
  image.write_bytes(encoded[1])
  out, png = tmp_path / "perf.json", tmp_path / "perf.png"
  done = _cli("perf", "--server", server.grpc_address, "--model", "vit", "--image", str(image),
              "--concurrency", "1,4", "--duration", "0.5", "--warmup", "0.1",
              "--json", str(out), "--plot", str(png))
  assert done.returncode == 0, done.stderr
  report = json.loads(out.read_text())
  assert report["signature"] == "predict_bytes"
  assert [lv["concurrency"] for lv in report["levels"]] == [1, 4]
  for level in report["levels"]:
    assert level["requests"] > 0 and level["errors"] == {} and level["throughput"] > 0
    assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "p50 ms" in done.stdout

  done = _cli("perf", "--server", server.rest_address, "--rest", "--model", "vit",
              "--random", "--concurrency", "2", "--duration", "60", "--max-requests", "5",
              "--warmup", "0")
  assert done.returncode == 0, done.stderr
  # 60 s would allow hundreds: the five come from --max-requests, whatever the machine load.
  assert done.stdout.splitlines()[-1].split()[-2] == "5"  # requests column


def test_compressed_requests_get_the_same_answers(server, grpc_client, encoded):
  expected = grpc_client.predict_encoded("vit", encoded, version=1)
  with GrpcClient(server.grpc_address, compression=True, retry=NO_RETRY) as g, \
      RestClient(server.rest_address, compression=True, retry=NO_RETRY) as r:
    for client in (g, r):
      result = client.predict_encoded("vit", encoded, version=1)
      np.testing.assert_allclose(result["logits"], expected["logits"], atol=1e-5)
