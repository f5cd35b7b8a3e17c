"""Golden tests against the original vision_transformer code's outputs, and
exact parameter counts of every registered architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import export
from export.checkpoint import expected_shapes, interpolate_posembed

CASES = ["vit_a_token", "hybrid_c1_r1_wf1"]


def run_reference(name, data_dir, manifest, image_size=None):
  cfg = export.get_config(manifest[name]["config"])
  model = export.build_model(cfg)
  params = export.load_checkpoint(data_dir / f"{name}.npz", cfg, image_size=image_size)
  ref = np.load(data_dir / f"{name}_outputs.npz")
  logits, state = model.apply({"params": params}, ref["inputs"], train=False,
                              mutable=["intermediates"])
  inter = {k: v[0] for k, v in state["intermediates"].items()}
  return ref, np.asarray(logits), inter


@pytest.mark.parametrize("name", CASES)
def test_golden_outputs(name, data_dir, reference_manifest):
  ref, logits, inter = run_reference(name, data_dir, reference_manifest)
  np.testing.assert_allclose(logits, ref["logits"], atol=5e-5, rtol=5e-5)
  np.testing.assert_allclose(inter["pre_logits"], ref["pre_logits"], atol=5e-5, rtol=5e-5)
  np.testing.assert_allclose(inter["encoded"], ref["encoded"], atol=1e-4, rtol=1e-4)
  if "resnet_features" in ref:
    np.testing.assert_allclose(inter["resnet_features"][:1], ref["resnet_features"],
                               atol=1e-4, rtol=1e-4)


def test_features_only_returns_pre_logits(data_dir, reference_manifest):
  cfg = export.get_config(reference_manifest["vit_a_token"]["config"])
  model = export.build_model(cfg, features_only=True)
  params = export.load_checkpoint(data_dir / "vit_a_token.npz", cfg, features_only=True)
  assert "head" not in params
  ref = np.load(data_dir / "vit_a_token_outputs.npz")
  feats = model.apply({"params": params}, ref["inputs"])
  np.testing.assert_allclose(feats, ref["pre_logits"], atol=5e-5, rtol=5e-5)


def test_checkpoint_roundtrip_keeps_published_names(tmp_path, data_dir, reference_manifest):
  name = "hybrid_c1_r1_wf1"
  cfg = export.get_config(reference_manifest[name]["config"])
  params = export.load_checkpoint(data_dir / f"{name}.npz", cfg)
  export.save_checkpoint(params, tmp_path / "copy.npz")
  original = np.load(data_dir / f"{name}.npz")
  copy = np.load(tmp_path / "copy.npz")
  assert sorted(copy.files) == sorted(original.files)
  for k in original.files:
    np.testing.assert_array_equal(copy[k], original[k])


def test_posemb_resize_matches_scipy_align_corners():
  rng = np.random.RandomState(0)
  posemb = rng.randn(1, 1 + 16, 8).astype(np.float32)
  out = interpolate_posembed(posemb, 1 + 49, has_class_token=True)
  assert out.shape == (1, 50, 8)
  np.testing.assert_array_equal(out[:, 0], posemb[:, 0])
  grid = posemb[0, 1:].reshape(4, 4, 8)
  # Corners are aligned: output corners equal input corners exactly.
  new = out[0, 1:].reshape(7, 7, 8)
  for (i, j), (a, b) in {(0, 0): (0, 0), (0, 6): (0, 3), (6, 0): (3, 0), (6, 6): (3, 3)}.items():
    np.testing.assert_allclose(new[i, j], grid[a, b], atol=1e-6)
  # Output index 1 samples input 0.5 along each axis (3/6 * 1).
  np.testing.assert_allclose(new[1, 0], (grid[0, 0] + grid[1, 0]) / 2, atol=1e-5)


def test_posemb_resize_gap_has_no_class_row():
  posemb = np.arange(16 * 2, dtype=np.float32).reshape(1, 16, 2)
  assert interpolate_posembed(posemb, 64, has_class_token=False).shape == (1, 64, 2)


@pytest.mark.parametrize("name", CASES)
def test_load_at_other_image_size_resizes_posemb(name, data_dir, reference_manifest):
  cfg = export.get_config(reference_manifest[name]["config"])
  size = reference_manifest[name]["image_size"] * 2
  params = export.load_checkpoint(data_dir / f"{name}.npz", cfg, image_size=size)
  pe = params["Transformer"]["posembed_input"]["pos_embedding"]
  assert pe.shape == expected_shapes(cfg | {"num_classes": 10}, size)[
      "Transformer/posembed_input/pos_embedding"]
  model = export.build_model(cfg)
  out = model.apply({"params": params}, jnp.zeros((1, size, size, 3)))
  assert out.shape == (1, 10) and np.isfinite(out).all()


# Published counts (1000 classes, 224 px) from the ViT and AugReg papers' tables.
PARAM_COUNTS = {
    "Ti/16": 5_717_416, "S/16": 22_050_664, "B/32": 88_224_232, "B/16": 86_567_656,
    "B/8": 86_576_872, "L/16": 304_326_632, "R26+S/32": 36_431_912,
    "R50+L/32": 328_994_856,
}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_parameter_counts_match_published(name):
  cfg = export.get_config(name) | {"num_classes": 1000}
  shapes = expected_shapes(cfg, 224)
  assert sum(int(np.prod(s)) for s in shapes.values()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(export.MODELS))
def test_every_registered_model_builds(name):
  cfg = export.get_config(name) | {"num_classes": 1000}
  model = export.build_model(cfg)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  out = jax.eval_shape(lambda x: model.apply(
      model.init(jax.random.PRNGKey(0), x[:1]), x), x)
  assert out.shape == (2, 1000)
