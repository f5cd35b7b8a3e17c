"""Fine-tuning an exported feature extractor: a backbone trained on digits 0-4
only is exported with --kind features, fine-tuned on image folders of digits
5-9 (classes it never saw), published as a classifier version, and served by
the embedded server: far better than chance (20%) on held-out digits."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from export import digits, finetune, finetuning, repository
from export.checkpoint import read_npz, save_checkpoint
from export.exporter import export_checkpoint
from tests.support import tiny_models

SEEN, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
NAME = "digits_5to9"


def subset(split: digits.Split, classes: list[int]) -> digits.Split:
  keep = np.isin(split.labels, classes)
  return digits.Split(split.images[keep], split.labels[keep], split.indices[keep])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
  root = tmp_path_factory.mktemp("finetune")
  train, test = digits.load()
  trained = digits.train(digits.Recipe(steps=150), (subset(train, SEEN), subset(test, SEEN)))
  save_checkpoint(trained.params, root / "backbone.npz")
  features = export_checkpoint(str(root / "backbone.npz"), "digits_features", root / "base",
                               config=digits.CONFIG, kind="features", model_config_file=None,
                               warmup_batch_sizes=(1,))
  counts = digits.write_image_folder(train, root / "images", classes=NEW, per_class=30)
  assert counts == {str(c): 30 for c in NEW}
  return {"root": root, "features": features, "test": subset(test, NEW),
          "backbone": read_npz(root / "backbone.npz")}


def backbone_arrays(checkpoint: Path) -> dict[str, np.ndarray]:
  return {k: v for k, v in read_npz(checkpoint).items() if not k.startswith("head/")}


@pytest.fixture(scope="module")
def head_only(base) -> finetuning.Result:
  root = base["root"]
  return finetuning.fine_tune(base["features"], root / "images", root / "models", NAME,
                              finetune.Recipe(epochs=30), checkpoint_dir=root / "checkpoints",
                              log=lambda _: None)


def test_head_only_publishes_a_classifier_version(head_only, base):
  root = base["root"]
  assert head_only.version_dir == root / "models" / NAME / "1"
  assert head_only.classes == [str(c) for c in NEW]
  assert (head_only.train_examples, head_only.validation_examples) == (120, 30)
  # the served graph (predict_bytes on the PNG files) agrees with training
  assert head_only.served_validation_accuracy == head_only.validation_accuracy
  assert head_only.validation_accuracy >= 0.5  # chance: 0.2

  version = head_only.version_dir
  labels = (version / "assets" / "labels.txt").read_text().split()
  assert labels == head_only.classes
  manifest = json.loads((version / repository.MANIFEST).read_text())
  assert manifest["kind"] == "classifier" and manifest["num_classes"] == 5
  assert manifest["checkpoint"]["source"] == str(head_only.checkpoint)
  assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()
  assert 'name: "digits_5to9"' in (root / "models.config").read_text()

  # head only: the backbone is the feature extractor's, unchanged
  tuned = read_npz(head_only.checkpoint)
  assert tuned["head/kernel"].shape == (64, 5)
  expected = {k: v for k, v in base["backbone"].items() if not k.startswith("head/")}
  assert backbone_arrays(head_only.checkpoint).keys() == expected.keys()
  for k, v in expected.items():
    np.testing.assert_array_equal(tuned[k], v, err_msg=k)
  record = json.loads(head_only.checkpoint.with_suffix(".json").read_text())
  assert record["base_model"]["name"] == "digits_features"
  assert record["served_validation_accuracy"] == head_only.served_validation_accuracy


def test_signatures_match_the_exporters_classifiers(head_only):
  loaded = tf.saved_model.load(str(head_only.version_dir))
  assert set(loaded.signatures) == {"serving_default", "predict_uint8", "predict_bytes"}
  pixels = np.zeros((2, 32, 32, 3), np.uint8)
  out = loaded.signatures["predict_uint8"](images=tf.constant(pixels))
  assert sorted(out) == ["logits", "probabilities", "top_k_classes", "top_k_labels",
                         "top_k_scores"]
  assert out["logits"].shape == (2, 5) and out["top_k_classes"].dtype == tf.int32


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def test_served_by_the_embedded_server_over_grpc(head_only, base):
  root, test = base["root"], base["test"]
  version = int(head_only.version_dir.name)
  # Exactly head_only's version: another test of this module may publish a
  # later one, which the published models.config (latest) would serve instead.
  config = root / "head_only.config"
  config.write_text(f'model_config_list {{ config {{ name: "{NAME}" '
                    f'base_path: "{root / "models" / NAME}" model_platform: "tensorflow" '
                    f'model_version_policy {{ specific {{ versions: {version} }} }} }} }}')
  server = tiny_models.ServerProcess([f"--port={tiny_models.free_port()}",
                                  f"--model_config_file={config}",
                                  "--xla_cpu_compilation_enabled=true"], cwd=root)
  try:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.model_spec.version.value = version
    request.model_spec.signature_name = "predict_bytes"
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto([_png(p) for p in test.images], dtype=tf.string))
    with grpc.insecure_channel(server.grpc_address) as channel:
      response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
          request, timeout=60)
  finally:
    server.stop()
  classes = tf.make_ndarray(response.outputs["top_k_classes"])[:, 0]
  labels = tf.make_ndarray(response.outputs["top_k_labels"])[:, 0]
  assert response.model_spec.version.value == version == 1
  assert [x.decode() for x in labels] == [head_only.classes[c] for c in classes]
  accuracy = np.mean(np.array([int(x) for x in labels]) == test.labels)
  assert len(test.labels) > 150 and accuracy >= 0.5  # held-out digits 5-9; chance 0.2


def test_cli_with_backbone_training_publishes_the_next_version(head_only, base, capsys):
  root = base["root"]
  args = ["--features-model", str(base["features"]), "--images", str(root / "images"),
          "--repo", str(root / "models"), "--name", NAME, "--epochs", "2",
          "--train-backbone", "--backbone-learning-rate", "1e-3",
          "--checkpoint-dir", str(root / "checkpoints")]
  assert finetune.main(args) == 0
  out = capsys.readouterr()
  assert out.out.split() == [str(root / "models" / NAME / "2")]
  assert "epoch 2/2" in out.err and "export: publish version 2" in out.err
  assert (root / "models.config").read_text().count(f'name: "{NAME}"') == 1
  manifest = json.loads((root / "models" / NAME / "2" / repository.MANIFEST).read_text())
  tuned = Path(manifest["checkpoint"]["source"])
  record = json.loads(tuned.with_suffix(".json").read_text())
  assert record["recipe"]["train_backbone"] and record["validation_accuracy"] >= 0.5
  changed = [k for k, v in backbone_arrays(tuned).items()
             if not np.array_equal(v, base["backbone"][k])]
  assert len(changed) > 10  # the backbone moved


def test_rejects_a_classifier_and_a_one_class_folder(head_only, base, tmp_path, capsys):
  with pytest.raises(finetuning.FineTuneError, match="expected 'features'"):
    finetuning.load_feature_extractor(head_only.version_dir)
  (tmp_path / "only" / "a").mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "only" / "a" / "x.png")
  with pytest.raises(finetuning.FineTuneError, match="at least two"):
    finetuning.read_image_folder(tmp_path / "only")
  args = ["--features-model", str(head_only.version_dir), "--images",
          str(base["root"] / "images"), "--repo", str(tmp_path / "models"), "--name", "x"]
  assert finetune.main(args) == 1
  assert "expected 'features'" in capsys.readouterr().err
  assert not (tmp_path / "models").exists()


def test_a_corrupt_image_is_a_one_line_error(base, tmp_path, capsys):
  images = tmp_path / "images"
  shutil.copytree(base["root"] / "images", images)
  bad = next((images / "5").glob("*.png"))
  bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  args = ["--features-model", str(base["features"]), "--images", str(images),
          "--repo", str(tmp_path / "models"), "--name", "x"]
  assert finetune.main(args) == 1
  err = capsys.readouterr().err
  assert f"error: {bad}: cannot decode the image" in err, err
  assert "Traceback" not in err and err.count("error:") == 1
  assert not (tmp_path / "models").exists()


def test_split_is_stratified_and_keeps_a_training_image_per_class():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
  train, val = finetuning.split(labels, 0.2, seed=0)
  assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]
  assert not set(train) & set(val) and len(train) + len(val) == len(labels)
