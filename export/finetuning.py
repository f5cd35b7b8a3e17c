"""Fine-tuning an exported feature extractor on an image folder, in TensorFlow.

The command line is `python -m export.finetune` (export/finetune.py, which
also holds the settings, `Recipe`).

What the seed's fine_tune notebook did on tf_flowers, on a served model: the
feature extractor (`--kind features` export: `obj(images)` -> pre_logits,
trainable variables, gradients through the jax2tf graph) is loaded with
`tf.saved_model.load`, a new linear head (and with --train-backbone the
backbone too) is trained with a Keras optimizer in a tf.GradientTape loop on
`DIR/<class>/*.{png,jpg,...}`. Images are decoded, resized and scaled by the
exporter's own serving code (`export.signatures`), so training sees exactly
what `predict_bytes` will see.

The result is not saved from TensorFlow directly: the trained variables, named
by their original parameter paths in the export, are written back as an
ORIGINAL-format checkpoint (the backbone's arrays plus `head/{kernel,bias}`)
and published with `export.export_checkpoint`. So a fine-tuned version is
built, verified against JAX, published atomically as the next free version and
added to models.config exactly like any other export, with the same three
signatures and outputs, ready for a canary. The checkpoint is kept (by content
hash) in --checkpoint-dir with a JSON sidecar recording the base model, the
classes, the recipe and the held-out accuracy.

Validation: a fixed, stratified `--validation-fraction` of each class is held
out; its accuracy is measured in training and again through the published
SavedModel's `predict_bytes` signature (the served path).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

import contract
from export import download, exporter, repository
from export.finetune import Recipe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
_PROJECT = Path(__file__).resolve().parent.parent

Log = Callable[[str], None]


class FineTuneError(ValueError):
  """Bad inputs (not a feature extractor, unusable image folder, ...)."""


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  classes: list[str]
  files: list[Path]
  labels: np.ndarray    # int32, index into classes


@dataclasses.dataclass(frozen=True)
class Result:
  version_dir: Path
  checkpoint: Path
  classes: list[str]
  train_accuracy: float
  validation_accuracy: float | None         # in TF, after training
  served_validation_accuracy: float | None  # through the published predict_bytes
  train_examples: int
  validation_examples: int
  train_seconds: float
  export_seconds: float


def read_image_folder(root: str | os.PathLike) -> ImageFolder:
  """`root/<class>/<image>`: classes are the sorted subfolder names."""
  root = Path(root)
  if not root.is_dir():
    raise FineTuneError(f"{root}: not a directory")
  classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  files, labels = [], []
  for index, name in enumerate(classes):
    found = sorted(p for p in (root / name).iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
      raise FineTuneError(f"{root / name}: no images ({', '.join(IMAGE_SUFFIXES)})")
    files += found
    labels += [index] * len(found)
  if len(classes) < 2:
    raise FineTuneError(f"{root}: need at least two class subfolders, found {classes}")
  return ImageFolder(classes, files, np.asarray(labels, np.int32))


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Stratified (train, validation) indices; every class keeps >= 1 training image."""
  rng = np.random.RandomState(seed)
  train, val = [], []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    n_val = min(int(round(len(rows) * fraction)), len(rows) - 1)
    val.append(rows[:n_val])
    train.append(rows[n_val:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_images(files: list[Path], image_size: int) -> np.ndarray:
  """float32 [n, S, S, 3] in [-1, 1], with the serving graph's own decode,
  bilinear resize and scaling (`export.signatures`)."""
  from export.signatures import decode_and_resize, scale_pixels
  decode = tf.function(lambda b: scale_pixels(decode_and_resize(b, image_size)),
                       input_signature=[tf.TensorSpec([], tf.string)])

  def one(path: Path) -> np.ndarray:
    try:
      return decode(tf.io.read_file(os.fspath(path))).numpy()
    except tf.errors.InvalidArgumentError as e:   # TensorFlow's word for "not an image"
      raise FineTuneError(f"{path}: cannot decode the image "
                          f"({e.message.splitlines()[0]})") from None
  return np.stack([one(f) for f in files])


def load_feature_extractor(directory: str | os.PathLike) -> tuple[Any, dict]:
  """The loaded SavedModel and its export manifest; checks it is a feature
  extractor exported by `export` (its variables carry the parameter paths)."""
  directory = Path(directory)
  manifest_file = directory / repository.MANIFEST
  if not manifest_file.is_file():
    raise FineTuneError(f"{directory}: no {repository.MANIFEST}; expected a "
                        "version directory written by `python -m export --kind features`")
  manifest = json.loads(manifest_file.read_text())
  if manifest.get("kind") != "features":
    raise FineTuneError(f"{directory}: kind is {manifest.get('kind')!r}, expected "
                        "'features' (export it with --kind features)")
  model = tf.saved_model.load(os.fspath(directory))
  if not hasattr(model, "params"):
    raise FineTuneError(f"{directory}: the SavedModel has no `params` (variables by "
                        "parameter path); re-export it with this version of `export`")
  return model, manifest


def _batches(n: int, batch_size: int, rng: np.random.RandomState) -> list[np.ndarray]:
  order = rng.permutation(n)
  return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def train(backbone: Any, images: np.ndarray, labels: np.ndarray, num_classes: int,
          recipe: Recipe, *, log: Log = print) -> tuple[tf.Variable, tf.Variable]:
  """Trains a linear head (zero-initialised, as the original ViT head) on the
  backbone's features, and the backbone too with `recipe.train_backbone`
  (its variables are updated in place). Returns (kernel, bias)."""
  import keras

  dim = int(backbone(tf.constant(images[:1])).shape[-1])
  kernel = tf.Variable(tf.zeros((dim, num_classes)), name="head/kernel")
  bias = tf.Variable(tf.zeros((num_classes,)), name="head/bias")
  head = [kernel, bias]
  body = list(backbone.trainable_variables) if recipe.train_backbone else []
  head_optimizer = keras.optimizers.Adam(recipe.learning_rate)
  body_optimizer = keras.optimizers.Adam(recipe.backbone_learning_rate)

  if recipe.train_backbone:
    inputs = images
    def features(x: tf.Tensor) -> tf.Tensor:
      return backbone(x)
  else:  # a frozen backbone: compute the features once
    inputs = np.concatenate([backbone(tf.constant(images[i:i + 64])).numpy()
                             for i in range(0, len(images), 64)])
    def features(x: tf.Tensor) -> tf.Tensor:
      return x

  @tf.function
  def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    with tf.GradientTape() as tape:
      logits = features(x) @ kernel + bias
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, head + body)
    head_optimizer.apply_gradients(zip(grads[:2], head))
    if body:
      body_optimizer.apply_gradients(zip(grads[2:], body))
    return loss

  rng = np.random.RandomState(recipe.seed)
  for epoch in range(recipe.epochs):
    losses = [float(step(tf.constant(inputs[b]), tf.constant(labels[b])))
              for b in _batches(len(labels), recipe.batch_size, rng)]
    log(f"  epoch {epoch + 1}/{recipe.epochs}  loss {np.mean(losses):.4f}")
  return kernel, bias


def predict(backbone: Any, kernel: tf.Variable, bias: tf.Variable, images: np.ndarray
            ) -> np.ndarray:
  logits = [(backbone(tf.constant(images[i:i + 64])) @ kernel + bias).numpy()
            for i in range(0, len(images), 64)]
  return np.argmax(np.concatenate(logits), axis=-1)


def served_predictions(version_dir: Path, files: list[Path]) -> np.ndarray:
  """Top-1 classes from the published SavedModel's `predict_bytes` signature."""
  served = tf.saved_model.load(os.fspath(version_dir)).signatures[contract.ENCODED.name]
  key = contract.ENCODED.input_key
  out = [served(**{key: tf.constant([f.read_bytes() for f in files[i:i + 64]])})
         ["top_k_classes"][:, 0].numpy() for i in range(0, len(files), 64)]
  return np.concatenate(out)


def _arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Flat `a/b/c` -> array of a restored (tracked, dict-like) variable tree."""
  if isinstance(tree, tf.Variable):
    return {prefix: tree.numpy()}
  flat: dict[str, np.ndarray] = {}
  for key in tree:
    flat.update(_arrays(tree[key], f"{prefix}/{key}" if prefix else key))
  return flat


def save_fine_tuned(backbone: Any, kernel: tf.Variable, bias: tf.Variable,
                    directory: Path, name: str) -> Path:
  """The backbone's variables (by parameter path) plus the head, as an
  original-format checkpoint `<directory>/<name>-<sha256[:16]>.npz`."""
  from export.checkpoint import save_checkpoint, unflatten

  flat = _arrays(backbone.params)
  flat["head/kernel"] = kernel.numpy()
  flat["head/bias"] = bias.numpy()
  directory.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".npz", dir=directory)
  os.close(fd)
  save_checkpoint(unflatten(flat), tmp)
  target = directory / f"{name}-{download.sha256(tmp)[:16]}.npz"
  os.replace(tmp, target)
  return target


def fine_tune(features_model: str | os.PathLike, images: str | os.PathLike,
              repo: str | os.PathLike, name: str, recipe: Recipe = Recipe(), *,
              model_config_file: exporter.ModelConfigFile = exporter.DEFAULT_MODEL_CONFIG,
              checkpoint_dir: str | os.PathLike | None = None, log: Log = print) -> Result:
  """Fine-tunes and publishes `<repo>/<name>/<next version>/`.

  `model_config_file` as for `export_checkpoint` (default: models.config next
  to the repository; None updates no config).
  """
  if recipe.epochs < 1 or recipe.batch_size < 1 or not 0 <= recipe.validation_fraction < 1:
    raise FineTuneError(f"bad recipe: {recipe}")
  folder = read_image_folder(images)
  backbone, base = load_feature_extractor(features_model)
  size = int(base["image_size"])
  started = time.perf_counter()
  pixels = load_images(folder.files, size)
  train_idx, val_idx = split(folder.labels, recipe.validation_fraction, recipe.seed)
  log(f"{len(folder.files)} images in {len(folder.classes)} classes at {size}px "
      f"({len(train_idx)} train, {len(val_idx)} validation), loaded in "
      f"{time.perf_counter() - started:.1f}s")

  started = time.perf_counter()
  kernel, bias = train(backbone, pixels[train_idx], folder.labels[train_idx],
                       len(folder.classes), recipe, log=log)
  train_seconds = time.perf_counter() - started

  def acc(idx: np.ndarray) -> float | None:
    if not len(idx):
      return None
    return float(np.mean(predict(backbone, kernel, bias, pixels[idx]) == folder.labels[idx]))

  train_acc, val_acc = acc(train_idx), acc(val_idx)
  log(f"trained in {train_seconds:.1f}s: train accuracy {train_acc:.4f}"
      + (f", validation accuracy {val_acc:.4f}" if val_acc is not None else ""))

  checkpoint_dir = Path(checkpoint_dir or _PROJECT / ".cache" / "finetune")
  checkpoint = save_fine_tuned(backbone, kernel, bias, checkpoint_dir, name)
  config = dict(base["config"], num_classes=len(folder.classes))
  started = time.perf_counter()
  version_dir = exporter.export_checkpoint(
      os.fspath(checkpoint), name, repo, config=config, image_size=size,
      kind="classifier", labels=folder.classes,
      model_config_file=model_config_file)
  export_seconds = time.perf_counter() - started

  served_acc = None
  if len(val_idx):
    served = served_predictions(version_dir, [folder.files[i] for i in val_idx])
    served_acc = float(np.mean(served == folder.labels[val_idx]))
    log(f"published {version_dir} in {export_seconds:.1f}s; validation accuracy "
        f"through predict_bytes {served_acc:.4f}")
  result = Result(version_dir, checkpoint, folder.classes, train_acc, val_acc, served_acc,
                  len(train_idx), len(val_idx), round(train_seconds, 1),
                  round(export_seconds, 1))
  record = {"base_model": {"directory": os.path.abspath(features_model),
                           "name": base.get("name"), "version": base.get("version"),
                           "checkpoint": base.get("checkpoint")},
            "images": os.path.abspath(images), "recipe": dataclasses.asdict(recipe),
            **{k: (os.fspath(v) if isinstance(v, Path) else v)
               for k, v in dataclasses.asdict(result).items()}}
  checkpoint.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
  return result
