"""The default model: deterministic training on sklearn's digits to >= 95%
held-out accuracy, an original-format checkpoint that loads like a released
one, the training cache, and `python -m export.default_model` publishing
versions once (idempotent) and writing held-out images.

The short run (500 steps) is trained once per session; the export test swaps
in tiny recipes, since what it checks does not depend on accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import export
from export import default_model, digits, repository
from export.checkpoint import read_npz


@pytest.fixture(scope="session")
def data() -> tuple[digits.Split, digits.Split]:
  return digits.load()


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> default_model.CachedRun:
  cache = tmp_path_factory.mktemp("cache")
  return default_model.trained_run("short", cache, log=lambda _: None)


def test_data_is_uint8_rgb_with_a_fixed_stratified_split(data):
  train, test = data
  assert train.images.shape == (1438, 32, 32, 3) and test.images.shape == (359, 32, 32, 3)
  assert train.images.dtype == np.uint8 and train.images.max() == 255
  # grayscale replicated to three channels
  np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])
  assert not set(train.indices) & set(test.indices)
  assert len(set(train.indices) | set(test.indices)) == 1797
  counts = np.bincount(test.labels, minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class
  again = digits.load()[1]
  np.testing.assert_array_equal(again.indices, test.indices)


def test_short_run_reaches_95_percent_on_the_recorded_held_out_split(short_run, data):
  info = short_run.info
  assert not short_run.cached
  assert info["test_accuracy"] >= 0.95
  assert info["data"]["test_indices"] == [int(i) for i in data[1].indices]
  assert info["recipe"]["steps"] == digits.RUNS["short"].steps


def test_checkpoint_is_in_the_published_format_and_loads(short_run, data):
  keys = set(read_npz(short_run.checkpoint))
  assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in keys
  assert "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel" in keys
  assert "Transformer/encoderblock_0/LayerNorm_2/scale" in keys
  assert not any("MultiHeadDotProductAttention_0" in k or "MlpBlock_0" in k for k in keys)
  assert {"head/kernel", "head/bias", "cls", "embedding/kernel"} <= keys

  cfg = export.get_config(short_run.config)  # the config JSON next to it
  assert cfg["transformer"]["num_layers"] == digits.CONFIG["transformer"]["num_layers"]
  params = export.load_checkpoint(short_run.checkpoint, cfg)
  model = export.build_model(cfg)
  assert digits.accuracy(model, params, data[1]) == short_run.info["test_accuracy"]


def test_second_call_hits_the_cache(short_run, monkeypatch):
  def no_training(*args, **kwargs):
    raise AssertionError("trained again despite the cache")
  monkeypatch.setattr(digits, "train", no_training)
  again = default_model.trained_run("short", short_run.directory.parent, log=lambda _: None)
  assert again.cached and again.directory == short_run.directory
  assert again.info == short_run.info


def test_training_is_deterministic(data):
  recipe = digits.Recipe(steps=30)
  first = digits.train(recipe, data)
  second = digits.train(recipe, data)
  flat = lambda t: export.checkpoint.flatten(t)  # noqa: E731
  a, b = flat(first.params), flat(second.params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert first.test_accuracy == second.test_accuracy and first.final_loss == second.final_loss


def test_cache_key_follows_recipe_and_config(monkeypatch):
  short = digits.RUNS["short"]
  key = default_model.cache_key(short)
  assert key == default_model.cache_key(digits.Recipe(steps=short.steps))
  assert key != default_model.cache_key(digits.Recipe(steps=short.steps + 1))
  monkeypatch.setattr(digits, "CONFIG", digits.CONFIG | {"hidden_size": 32})
  assert key != default_model.cache_key(short)


def test_cli_publishes_each_run_once(tmp_path, capsys, monkeypatch):
  # Tiny recipes: what is checked here does not depend on accuracy.
  monkeypatch.setattr(digits, "RUNS", {"short": digits.Recipe(steps=20)})
  args = ["--repo", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache")]
  model_dir = tmp_path / "models" / default_model.MODEL_NAME
  assert default_model.main(args) == 0
  out = capsys.readouterr()
  assert out.out.split() == [str(model_dir / "1")]
  assert "training 20 steps" in out.err and "export: publish version 1" in out.err

  digits.RUNS["long"] = digits.Recipe(steps=40)  # a new (or changed) run
  assert default_model.main(args) == 0
  out = capsys.readouterr()
  assert out.out.split() == [str(model_dir / "1"), str(model_dir / "2")]
  assert "short: cached in" in out.err
  assert f"{model_dir / '1'} already holds this export" in out.err  # the exporter's rule
  assert "long: training 40 steps" in out.err

  by_run = {i["run"]: i for i in (json.loads(p.read_text())
                                  for p in (tmp_path / "cache").glob("*/training.json"))}
  for version, run in ((1, "short"), (2, "long")):
    manifest = json.loads((model_dir / str(version) / repository.MANIFEST).read_text())
    assert manifest["checkpoint"]["sha256"] == by_run[run]["checkpoint_sha256"]
    assert manifest["kind"] == "classifier" and manifest["image_size"] == 32
    labels = (model_dir / str(version) / "assets" / "labels.txt").read_text().split()
    assert labels == digits.LABELS
  config = (tmp_path / "models.config").read_text()
  assert config.count(f'name: "{default_model.MODEL_NAME}"') == 1

  assert default_model.main(args) == 0  # idempotent: no retraining, no new versions
  out = capsys.readouterr()
  assert out.out.split() == [str(model_dir / "1"), str(model_dir / "2")]
  assert out.err.count("cached in") == 2
  assert out.err.count("already holds this export") == 2
  assert "publish version" not in out.err
  assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]
  assert (tmp_path / "models.config").read_text() == config


def test_named_model_is_delegated_and_skipped_when_present(tmp_path, monkeypatch, data_dir,
                                                           reference_manifest):
  from export import zoo
  real_resolve = zoo.resolve

  def resolve(src):  # an offline stand-in for a zoo name
    if src == "Tiny/8":
      return zoo.ResolvedCheckpoint(source=str(data_dir / "vit_a_token.npz"),
                                    config=reference_manifest["vit_a_token"]["config"])
    return real_resolve(src)
  monkeypatch.setattr(zoo, "resolve", resolve)
  args = ["--repo", str(tmp_path / "models"), "--model", "Tiny/8"]
  assert default_model.main(args) == 0
  assert default_model.main(args) == 0
  assert sorted(p.name for p in (tmp_path / "models" / "vit_tiny_8").iterdir()) == ["1"]
  assert 'name: "vit_tiny_8"' in (tmp_path / "models.config").read_text()


@pytest.mark.parametrize("spec,name", [
    ("B/16", "vit_b_16"), ("R26+S/32-medium", "vit_r26_s_32_medium"),
    ("ViT-B_16", "vit_b_16"), ("gs://vit_models/augreg/Ti_16-i21k.npz", "vit_ti_16_i21k")])
def test_model_names_derived_from_checkpoint_names(spec, name):
  assert default_model.model_name_for(spec) == name


def test_write_images_writes_held_out_pngs(tmp_path, data, capsys):
  assert default_model.main(["--write-images", str(tmp_path), "--count", "12"]) == 0
  paths = capsys.readouterr().out.split()
  assert len(paths) == 12
  test = data[1]
  for i, p in enumerate(paths):
    name = p.rsplit("/", 1)[1]
    label, row = name[len("digit"):-len(".png")].split("_")
    assert label == str(i % 10)
    pixels = np.asarray(Image.open(p))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    where = np.flatnonzero(test.indices == int(row))
    assert len(where) == 1, "not a held-out image"
    np.testing.assert_array_equal(pixels, test.images[where[0]])
    assert test.labels[where[0]] == int(label)


def test_write_class_folders_writes_training_digits_by_label(tmp_path, data):
  assert default_model.main(["--write-class-folders", str(tmp_path), "--count", "3"]) == 0
  train = data[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == [str(d) for d in range(10)]
  for folder in tmp_path.iterdir():
    files = sorted(folder.glob("*.png"))
    assert len(files) == 3
    for f in files:
      where = np.flatnonzero(train.indices == int(f.stem))
      assert len(where) == 1, "not a training image"
      assert train.labels[where[0]] == int(folder.name)
      np.testing.assert_array_equal(np.asarray(Image.open(f)), train.images[where[0]])
