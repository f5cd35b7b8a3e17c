"""The loader refuses checkpoints that do not fit, naming every problem."""

import json

import numpy as np
import pytest

import export
from export import CheckpointError


@pytest.fixture
def cfg(reference_manifest):
  return export.get_config(reference_manifest["vit_a_token"]["config"])


@pytest.fixture
def arrays(data_dir):
  with np.load(data_dir / "vit_a_token.npz") as f:
    return {k: f[k] for k in f.files}


def test_wrong_config_names_every_mismatch(data_dir, cfg):
  wrong = cfg | {"hidden_size": 48, "transformer": cfg["transformer"] | {"num_layers": 3}}
  with pytest.raises(CheckpointError) as info:
    export.load_checkpoint(data_dir / "vit_a_token.npz", wrong)
  message = str(info.value)
  assert "does not fit the config" in message
  assert "missing: Transformer/encoderblock_2/LayerNorm_0/scale (48,)" in message
  assert "mis-shaped: cls: checkpoint (1, 1, 32), model (1, 1, 48)" in message
  assert "mis-shaped: head/kernel: checkpoint (32, 10), model (48, 10)" in message


def test_missing_and_unexpected_keys_are_named(tmp_path, cfg, arrays):
  del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
  arrays["extra/kernel"] = np.zeros((2, 2), np.float32)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(CheckpointError) as info:
    export.load_checkpoint(tmp_path / "bad.npz", cfg)
  message = str(info.value)
  assert "missing: Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias (64,)" in message
  assert "unexpected: extra/kernel (2, 2)" in message


def test_representation_layer_is_required_when_configured(data_dir, cfg):
  with pytest.raises(CheckpointError, match="missing: pre_logits/kernel"):
    export.load_checkpoint(data_dir / "vit_a_token.npz", cfg | {"representation_size": 16})


def test_truncated_file(tmp_path, data_dir, cfg):
  data = (data_dir / "vit_a_token.npz").read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="cut.npz: not a readable .npz checkpoint"):
    export.load_checkpoint(tmp_path / "cut.npz", cfg)


def test_not_an_npz(tmp_path, cfg):
  (tmp_path / "model.npz").write_text(json.dumps({"not": "weights"}))
  with pytest.raises(CheckpointError, match="model.npz: not a readable .npz checkpoint"):
    export.load_checkpoint(tmp_path / "model.npz", cfg)
  np.save(tmp_path / "single.npy", np.zeros(3))
  with pytest.raises(CheckpointError, match="single.npy: not an .npz checkpoint"):
    export.load_checkpoint(tmp_path / "single.npy", cfg)


def test_no_such_file(tmp_path, cfg):
  with pytest.raises(FileNotFoundError, match="absent.npz: no such file"):
    export.load_checkpoint(tmp_path / "absent.npz", cfg)


def test_linen_names_load_like_published_ones(tmp_path, data_dir, cfg, arrays):
  linen = {k.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
            .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"): v
           for k, v in arrays.items()}
  np.savez(tmp_path / "linen.npz", **linen)
  a = export.load_checkpoint(data_dir / "vit_a_token.npz", cfg)
  b = export.load_checkpoint(tmp_path / "linen.npz", cfg)
  flat_a = export.checkpoint.flatten(a)
  flat_b = export.checkpoint.flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k])


def test_groupnorm_arrays_are_squeezed(data_dir, reference_manifest):
  cfg = export.get_config(reference_manifest["hybrid_c1_r1_wf1"]["config"])
  params = export.load_checkpoint(data_dir / "hybrid_c1_r1_wf1.npz", cfg)
  assert params["gn_root"]["scale"].shape == (64,)
  assert params["block1"]["unit1"]["gn3"]["bias"].shape == (256,)


def test_gap_model_with_representation_roundtrips_and_resizes(tmp_path, cfg):
  import jax
  gap = cfg | {"classifier": "gap", "representation_size": 16, "num_classes": 7}
  model = export.build_model(gap)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
  export.save_checkpoint(params, tmp_path / "gap.npz")
  with np.load(tmp_path / "gap.npz") as f:
    assert "cls" not in f.files and f["pre_logits/kernel"].shape == (32, 16)
    assert f["Transformer/posembed_input/pos_embedding"].shape == (1, 16, 32)
  loaded = export.load_checkpoint(tmp_path / "gap.npz", cfg | {"classifier": "gap",
                                                               "representation_size": 16},
                                  image_size=64)
  assert loaded["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 64, 32)
  out = export.build_model(gap).apply({"params": loaded}, np.zeros((2, 64, 64, 3), np.float32))
  assert out.shape == (2, 7)
