"""The jax2tf exporter: golden outputs through re-loaded SavedModels, the three
entry points against a numpy mirror of the documented preprocessing, batch
sizes, posemb resize, fine-tuning from TF, warmup, manifest, models.config,
and that failed exports leave the repository as it was.

Exports cost seconds each, so they are made once per session (`exported`) and
shared; failure tests work on copies.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

import export
from export import exporter, repository, warmup

CASES = ["vit_a_token", "hybrid_c1_r1_wf1"]
CLASSIFIER_KEYS = {"logits", "probabilities", "top_k_scores", "top_k_classes", "top_k_labels"}
EXISTING_CONFIG = """\
model_config_list {
  config {
    name: "kept"
    base_path: "/somewhere/kept"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 4 } }
    version_labels { key: "stable" value: 3 }
    version_labels { key: "canary" value: 4 }
  }
}
"""


def numpy_resize(pixels: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize with half-pixel centers, no antialias, float32, no
  rounding: the definition in export/signatures.py, written independently."""
  def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32(n / size) \
        - np.float32(0.5)
    i0 = np.floor(src)
    frac = (src - i0).astype(np.float32)
    lo = np.clip(i0, 0, n - 1).astype(int)
    hi = np.clip(i0 + 1, 0, n - 1).astype(int)
    return lo, hi, frac
  x = pixels.astype(np.float32)
  lo, hi, frac = axis(x.shape[1])
  x = x[:, lo] + (x[:, hi] - x[:, lo]) * frac[None, :, None]
  lo, hi, frac = axis(x.shape[0])
  return x[lo] + (x[hi] - x[lo]) * frac[:, None, None]


def client_preprocess(pixels: np.ndarray, size: int) -> np.ndarray:
  return (numpy_resize(pixels, size) - np.float32(127.5)) / np.float32(127.5)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


def snapshot(root: Path) -> dict[str, bytes | None]:
  """Every path under `root`, with the bytes of the small files."""
  return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and
                                     p.stat().st_size < 1 << 16 else None)
          for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("project")
  (root / "models.config").write_text(EXISTING_CONFIG)
  return root


@pytest.fixture(scope="session")
def exported(project, data_dir, reference_manifest):
  """`exported(case, kind, image_size=None)` -> the version directory,
  exporting into <project>/models on first use."""
  cache: dict[tuple, Path] = {}

  def get(case: str, kind: str = "classifier", image_size: int | None = None) -> Path:
    key = (case, kind, image_size)
    if key not in cache:
      name = f"{case}_{kind}" + (f"_{image_size}" if image_size else "")
      cache[key] = export.export_checkpoint(
          str(data_dir / f"{case}.npz"), name, project / "models",
          config=reference_manifest[case]["config"], kind=kind, image_size=image_size)
    return cache[key]
  return get


@pytest.fixture(scope="session")
def loaded(exported):
  cache: dict[tuple, object] = {}

  def get(*key) -> object:
    if key not in cache:
      cache[key] = tf.saved_model.load(str(exported(*key)))
    return cache[key]
  return get


@pytest.mark.parametrize("kind", ["classifier", "features"])
@pytest.mark.parametrize("case", CASES)
def test_saved_model_matches_reference_outputs(case, kind, loaded, data_dir):
  ref = np.load(data_dir / f"{case}_outputs.npz")
  out = loaded(case, kind).signatures["serving_default"](images=tf.constant(ref["inputs"]))
  if kind == "features":
    assert set(out) == {"features"}
    np.testing.assert_allclose(out["features"], ref["pre_logits"], atol=5e-5, rtol=5e-5)
  else:
    assert set(out) == CLASSIFIER_KEYS
    np.testing.assert_allclose(out["logits"], ref["logits"], atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("case", CASES)
def test_classifier_outputs_are_consistent(case, loaded, exported, data_dir):
  ref = np.load(data_dir / f"{case}_outputs.npz")
  out = loaded(case, "classifier").signatures["serving_default"](
      images=tf.constant(ref["inputs"]))
  assert out["logits"].dtype == tf.float32 and out["top_k_classes"].dtype == tf.int32
  assert out["top_k_labels"].dtype == tf.string
  assert out["logits"].shape == (2, 10) and out["top_k_scores"].shape == (2, 5)
  probs = out["probabilities"].numpy()
  np.testing.assert_allclose(probs, tf.nn.softmax(ref["logits"]).numpy(), atol=1e-5)
  expected_classes = np.argsort(-ref["logits"], axis=1)[:, :5]
  np.testing.assert_array_equal(out["top_k_classes"], expected_classes)
  np.testing.assert_allclose(out["top_k_scores"], np.take_along_axis(probs, expected_classes, 1))
  labels = (exported(case, "classifier") / "assets" / "labels.txt").read_text().splitlines()
  assert labels == export.labels.default_labels(10)
  assert [[s.decode() for s in row] for row in out["top_k_labels"].numpy()] == \
      [[labels[c] for c in row] for row in expected_classes]


@pytest.mark.parametrize("kind", ["classifier", "features"])
@pytest.mark.parametrize("case", CASES)
def test_entry_points_agree_with_client_preprocessing(case, kind, loaded, reference_manifest):
  size = reference_manifest[case]["image_size"]
  sigs = loaded(case, kind).signatures
  key = "logits" if kind == "classifier" else "features"
  rng = np.random.default_rng(1)
  at_size = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  other = rng.integers(0, 256, (size + 19, 2 * size - 5, 3), dtype=np.uint8)
  smooth = np.clip(np.add.outer(np.linspace(0, 200, 45), np.linspace(0, 55, 70))[..., None]
                   + [0, 20, 40], 0, 255).astype(np.uint8)

  def default(pixels: list[np.ndarray]) -> np.ndarray:
    x = np.stack([client_preprocess(p, size) for p in pixels])
    return sigs["serving_default"](images=tf.constant(x))[key].numpy()

  expected = default(list(at_size))
  uint8 = sigs["predict_uint8"](images=tf.constant(at_size))[key].numpy()
  np.testing.assert_allclose(uint8, expected, atol=1e-5, rtol=1e-5)

  images = [at_size[0], other, smooth]
  pngs = tf.constant([encode(p, "PNG") for p in images])
  np.testing.assert_allclose(sigs["predict_bytes"](image_bytes=pngs)[key].numpy(),
                             default(images), atol=1e-5, rtol=1e-5)

  # JPEG: decoded by PIL on the client side, by TF in the graph.
  jpeg = encode(smooth, "JPEG")
  decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
  np.testing.assert_allclose(
      sigs["predict_bytes"](image_bytes=tf.constant([jpeg]))[key].numpy(),
      default([decoded]), atol=1e-5, rtol=1e-5)


def test_numpy_resize_mirror_matches_tf():
  pixels = np.random.default_rng(2).integers(0, 256, (23, 41, 3), dtype=np.uint8)
  for size in (8, 32, 41, 64):
    got = tf.image.resize(tf.cast(pixels, tf.float32), [size, size], method="bilinear",
                          antialias=False).numpy()
    np.testing.assert_allclose(numpy_resize(pixels, size), got, atol=1e-3)


@pytest.mark.parametrize("kind", ["classifier", "features"])
def test_batch_sizes_and_empty_batch(kind, loaded, data_dir):
  sigs = loaded("vit_a_token", kind).signatures
  key = "logits" if kind == "classifier" else "features"
  x = np.random.default_rng(3).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  single = np.concatenate([sigs["serving_default"](images=tf.constant(x[i:i + 1]))[key]
                           for i in range(8)])
  for b in (1, 3, 8):
    out = sigs["serving_default"](images=tf.constant(x[:b]))
    assert all(v.shape[0] == b for v in out.values())
    np.testing.assert_allclose(out[key], single[:b], atol=1e-5, rtol=1e-5)

  empty = {"serving_default": {"images": tf.zeros((0, 32, 32, 3))},
           "predict_uint8": {"images": tf.zeros((0, 32, 32, 3), tf.uint8)},
           "predict_bytes": {"image_bytes": tf.constant([], tf.string)}}
  for sig, inputs in empty.items():
    out = sigs[sig](**inputs)
    assert out[key].shape == (0, 10 if kind == "classifier" else 32), sig
    if kind == "classifier":
      assert out["top_k_labels"].shape == (0, 5)


def test_wrong_input_size_and_bad_bytes_are_invalid_argument(loaded):
  sigs = loaded("vit_a_token", "classifier").signatures
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
    sigs["predict_uint8"](images=tf.zeros((1, 33, 32, 3), tf.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError):
    sigs["predict_bytes"](image_bytes=tf.constant([b"not an image"]))


def test_export_at_other_image_size_resizes_posemb(exported, loaded, data_dir,
                                                   reference_manifest):
  cfg = export.get_config(reference_manifest["vit_a_token"]["config"])
  params = export.load_checkpoint(data_dir / "vit_a_token.npz", cfg, image_size=48)
  x = np.random.default_rng(4).uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)
  expected = export.build_model(cfg).apply({"params": params}, x)
  sig = loaded("vit_a_token", "classifier", 48).signatures["serving_default"]
  assert sig.structured_input_signature[1]["images"].shape.as_list() == [None, 48, 48, 3]
  np.testing.assert_allclose(sig(images=tf.constant(x))["logits"], expected,
                             atol=5e-5, rtol=5e-5)
  manifest = json.loads((exported("vit_a_token", "classifier", 48) /
                         repository.MANIFEST).read_text())
  assert manifest["image_size"] == 48


def test_feature_extractor_fine_tunes_from_tensorflow(loaded, data_dir, reference_manifest):
  """Gradients through the re-loaded SavedModel equal JAX's, and a small
  gradient step on them (plus a new head) lowers the loss."""
  case = "vit_a_token"
  model = loaded(case, "features")
  cfg = export.get_config(reference_manifest[case]["config"])
  params = export.load_checkpoint(data_dir / f"{case}.npz", cfg, features_only=True)
  flat = export.checkpoint.flatten(params)
  assert sorted(v.name[:-2] for v in model.trainable_variables) == sorted(flat)
  size = reference_manifest[case]["image_size"]
  x = np.random.default_rng(5).uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 1])
  head = tf.Variable(np.random.default_rng(6).normal(0, 0.3, (32, 3)).astype(np.float32))

  def loss() -> tf.Tensor:
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x) @ head))

  jax_model = export.build_model(cfg, features_only=True)

  def jax_loss(p):
    logits = jax_model.apply({"params": p}, x) @ head.numpy()
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(4), y])
  expected = export.checkpoint.flatten(jax.grad(jax_loss)(params))

  before = [v.numpy() for v in model.trainable_variables]
  with tf.GradientTape() as tape:
    start = loss()
  variables = list(model.trainable_variables) + [head]
  grads = tape.gradient(start, variables)
  for v, g in zip(model.trainable_variables, grads):
    np.testing.assert_allclose(g, expected[v.name[:-2]], atol=1e-4, rtol=1e-3,
                               err_msg=v.name)
  for v, g in zip(variables, grads):
    v.assign_sub(1e-3 * g)
  after = float(loss())
  for v, b in zip(model.trainable_variables, before):  # restore for other tests
    v.assign(b)
  assert after < float(start)


def test_manifest_records_source_and_verification(exported, data_dir, reference_manifest):
  path = exported("hybrid_c1_r1_wf1", "classifier")
  manifest = json.loads((path / repository.MANIFEST).read_text())
  ckpt = data_dir / "hybrid_c1_r1_wf1.npz"
  assert manifest["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
  assert manifest["checkpoint"]["source"] == str(ckpt)
  assert manifest["kind"] == "classifier" and manifest["image_size"] == 64
  assert manifest["config"]["resnet"]["num_layers"] == [1]
  assert manifest["config"]["num_classes"] == 10
  assert set(manifest["libraries"]) >= {"jax", "tensorflow", "flax", "numpy"}
  check = manifest["verification"]
  assert set(check["per_signature"]) == {"serving_default", "predict_uint8", "predict_bytes"}
  assert 0 <= check["max_abs_diff"] <= check["tolerance"] and check["max_abs_diff"] < 1e-4
  assert sorted(p.name for p in path.iterdir()) == [
      "assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]


def test_feature_extractor_has_no_labels(exported):
  path = exported("vit_a_token", "features")
  assert not (path / "assets" / "labels.txt").exists()
  manifest = json.loads((path / repository.MANIFEST).read_text())
  assert manifest["kind"] == "features" and manifest["labels"] is None


def test_warmup_records_are_prediction_logs(exported, loaded):
  path = exported("vit_a_token", "classifier")
  records = list(tf.data.TFRecordDataset(
      str(path / "assets.extra" / warmup.FILENAME)).as_numpy_iterator())
  logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
  seen = []
  sigs = loaded("vit_a_token", "classifier").signatures
  for log in logs:
    request = log.predict_log.request
    assert request.model_spec.name == "vit_a_token_classifier"
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    seen.append((request.model_spec.signature_name, next(iter(inputs.values())).shape[0]))
    out = sigs[request.model_spec.signature_name](**{k: tf.constant(v)
                                                     for k, v in inputs.items()})
    assert out["logits"].shape == (seen[-1][1], 10)
  assert seen == [("serving_default", 1), ("serving_default", 2), ("serving_default", 4),
                  ("serving_default", 8), ("predict_uint8", 1), ("predict_bytes", 1)]


def test_models_config_keeps_entries_and_adds_new_models(project, exported):
  exported("vit_a_token", "classifier")
  exported("vit_a_token", "features")
  config = text_format.Parse((project / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  entries = {c.name: c for c in config.model_config_list.config}
  original = text_format.Parse(EXISTING_CONFIG, model_server_config_pb2.ModelServerConfig())
  assert entries["kept"] == original.model_config_list.config[0]
  for name in ("vit_a_token_classifier", "vit_a_token_features"):
    assert entries[name].base_path == f"models/{name}"
    assert entries[name].model_platform == "tensorflow"
  assert list(entries)[0] == "kept"


def test_base_path_is_absolute_outside_the_config_directory(tmp_path):
  config = tmp_path / "project" / "models.config"
  assert repository.base_path_for(tmp_path / "project" / "models", "m", config) == \
      "models/m"
  assert repository.base_path_for(tmp_path / "elsewhere", "m", config) == \
      str(tmp_path / "elsewhere" / "m")


# Failed exports: the repository (versions and models.config) stays as it was.

@pytest.fixture
def populated(tmp_path, exported) -> Path:
  """A project with one published version of "m" and a models.config."""
  shutil.copytree(exported("vit_a_token", "classifier"), tmp_path / "models" / "m" / "1")
  (tmp_path / "models.config").write_text(EXISTING_CONFIG)
  return tmp_path


def _export_m(project: Path, data_dir: Path, manifest: dict, **kw) -> Path:
  kw.setdefault("config", manifest["vit_a_token"]["config"])
  return export.export_checkpoint(str(kw.pop("checkpoint", data_dir / "vit_a_token.npz")),
                                  kw.pop("name", "m"), project / "models", **kw)


def test_bad_checkpoint_leaves_repository_unchanged(populated, data_dir, reference_manifest):
  before = snapshot(populated)
  bad = populated / "bad.npz"
  bad.write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(export.CheckpointError):
    _export_m(populated, data_dir, reference_manifest, checkpoint=bad)
  with pytest.raises(export.CheckpointError):  # a checkpoint of another architecture
    _export_m(populated, data_dir, reference_manifest, name="new",
              checkpoint=data_dir / "hybrid_c1_r1_wf1.npz")
  bad.unlink()
  assert snapshot(populated) == before


def test_wrong_label_count_is_rejected(populated, data_dir, reference_manifest):
  before = snapshot(populated)
  labels = populated / "labels.txt"
  labels.write_text("a\nb\nc\n")
  with pytest.raises(exporter.ExportError, match="3 labels.*10 classes"):
    _export_m(populated, data_dir, reference_manifest, name="new", labels=labels)
  labels.unlink()
  assert snapshot(populated) == before


def test_verification_failure_publishes_nothing(populated, data_dir, reference_manifest,
                                                monkeypatch):
  before = snapshot(populated)
  real = exporter._jax_reference
  monkeypatch.setattr(exporter, "_jax_reference",
                      lambda *a: real(*a) + np.float32(1e-3))  # a corrupt conversion
  with pytest.raises(exporter.ExportError, match="verification failed"):
    _export_m(populated, data_dir, reference_manifest, name="new")
  assert snapshot(populated) == before


def test_exact_gelu_in_the_saved_model_fails_verification(populated, data_dir,
                                                         reference_manifest, monkeypatch):
  """A porting bug the tolerance must catch: the SavedModel built with erf
  GELU while the checkpoint's model (and the JAX reference) uses tanh GELU;
  the error (~1.5e-4 relative here) is small but above the tolerance."""
  before = snapshot(populated)
  real_save = exporter._save

  def save_with_exact_gelu(tmp, job):
    with monkeypatch.context() as m:
      m.setattr(nn, "gelu", functools.partial(jax.nn.gelu, approximate=False))
      real_save(tmp, job)
  monkeypatch.setattr(exporter, "_save", save_with_exact_gelu)
  with pytest.raises(exporter.ExportError, match="verification failed") as info:
    _export_m(populated, data_dir, reference_manifest, name="new")
  assert snapshot(populated) == before
  diff, tolerance = (float(v) for v in re.search(r"= (\S+) > (\S+) ", str(info.value)).groups())
  assert diff > 2 * tolerance


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_publishes_nothing(error, populated, data_dir, reference_manifest,
                                             monkeypatch):
  before = snapshot(populated)

  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(warmup, "write", fail)  # after the SavedModel is written
  with pytest.raises(type(error)):
    _export_m(populated, data_dir, reference_manifest, labels=[f"l{i}" for i in range(10)])
  assert snapshot(populated) == before


def test_next_version_labels_list_and_no_overwrite(populated, data_dir, reference_manifest):
  shutil.copytree(populated / "models" / "m" / "1", populated / "models" / "m" / "5")
  names = [f"name {i}" for i in range(10)]
  path = _export_m(populated, data_dir, reference_manifest, labels=names)
  assert path == populated / "models" / "m" / "6"
  assert (path / "assets" / "labels.txt").read_text().splitlines() == names
  out = tf.saved_model.load(str(path)).signatures["predict_uint8"](
      images=tf.zeros((1, 32, 32, 3), tf.uint8))
  assert {s.decode() for s in out["top_k_labels"].numpy()[0]} <= set(names)
  config = text_format.Parse((populated / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  assert [c.name for c in config.model_config_list.config] == ["kept", "m"]
  assert config.model_config_list.config[1].base_path == "models/m"

  before = snapshot(populated)
  with pytest.raises(repository.PublishError, match="exists"):
    _export_m(populated, data_dir, reference_manifest, version=5)
  assert snapshot(populated) == before
