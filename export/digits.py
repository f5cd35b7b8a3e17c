"""The default model's data and training: scikit-learn's handwritten digits.

The default model is trained on a data set that ships inside a package, so the
bundle works offline. The 8x8 images (ink 0..16) are mapped to uint8 0..255,
upscaled bilinearly to 32x32 and replicated to RGB *before* training: the
model then sees exactly the pixels a caller sends as PNG to the served model,
and the serving graph's (x - 127.5) / 127.5 applies as for a real photo.

The train/test split is a fixed, stratified permutation (seeded), so the
held-out images are the same on every machine and are recorded by index.

Training (`train`) is plain JAX/optax on the project's own Flax ViT
(`export.build_model`), so the result is an ordinary original-format
checkpoint. Everything that decides the trained weights lives in this module
(plus the model code): `export.default_model` hashes its source into the
cache key. Runs are deterministic: fixed seeds for the initialisation, the
batch order and the augmentation (random shifts of up to `max_shift` pixels).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from export.configs import ViTConfig
from export.models import build_model

IMAGE_SIZE = 32
NUM_CLASSES = 10
LABELS = [str(d) for d in range(NUM_CLASSES)]  # class i is the digit i
SPLIT_SEED = 0
TEST_FRACTION = 0.2

# A small ViT with the original field names: 8x8 patches on 32x32 images give
# a 4x4 grid (17 tokens with the class token); ~70k parameters.
CONFIG = ViTConfig.from_dict({
    "model_name": "ViT-digits",
    "hidden_size": 64,
    "patches": {"size": [8, 8]},
    "transformer": {"mlp_dim": 128, "num_heads": 4, "num_layers": 2},
    "resnet": None,
    "classifier": "token",
    "representation_size": None,
    "num_classes": NUM_CLASSES,
})


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Hyper-parameters of one training run (all of them: they key the cache)."""
  steps: int
  batch_size: int = 64
  peak_learning_rate: float = 3e-3
  warmup_fraction: float = 0.1
  weight_decay: float = 1e-4
  max_shift: int = 2    # augmentation: random translation in pixels, zero fill
  seed: int = 0


RUNS: dict[str, Recipe] = {     # the default model's versions 1 and 2, in this order
    "short": Recipe(steps=500),
    "long": Recipe(steps=2000),
}


@dataclasses.dataclass(frozen=True)
class Trained:
  params: Any
  test_accuracy: float
  train_accuracy: float
  final_loss: float     # mean training loss over the last 50 steps
  seconds: float


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray    # uint8 [n, S, S, 3]
  labels: np.ndarray    # int32 [n]
  indices: np.ndarray   # int64 [n], rows of sklearn's load_digits()


def to_rgb_uint8(images_8x8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """[n, 8, 8] values 0..16 -> uint8 [n, size, size, 3] (bilinear upscale)."""
  out = np.empty((len(images_8x8), size, size, 3), np.uint8)
  for i, img in enumerate(images_8x8):
    small = Image.fromarray(np.round(np.asarray(img) * (255.0 / 16.0)).astype(np.uint8))
    big = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR))
    out[i] = big[..., None]
  return out


def split_indices(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                  seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """Stratified (train, test) row indices, sorted; the same for a given seed."""
  rng = np.random.RandomState(seed)
  train, test = [], []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(len(rows) * test_fraction))
    test.append(rows[:n_test])
    train.append(rows[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load(size: int = IMAGE_SIZE) -> tuple[Split, Split]:
  """The (train, test) splits as uint8 RGB images at `size`."""
  from sklearn.datasets import load_digits  # bundled data: no download
  digits = load_digits()
  images = to_rgb_uint8(digits.images, size)
  labels = digits.target.astype(np.int32)
  train, test = split_indices(labels)
  return (Split(images[train], labels[train], train),
          Split(images[test], labels[test], test))


def write_image_folder(split: Split, root: str | os.PathLike, *,
                       classes: list[int] | None = None, per_class: int | None = None
                       ) -> dict[str, int]:
  """Writes `root/<label>/<row>.png`, one subfolder per class (the layout
  `export.finetune` reads). Returns the number of images per label."""
  root = Path(root)
  classes = list(range(NUM_CLASSES)) if classes is None else classes
  counts: dict[str, int] = {}
  for c in classes:
    rows = np.flatnonzero(split.labels == c)[:per_class]
    folder = root / LABELS[c]
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
      Image.fromarray(split.images[r]).save(folder / f"{split.indices[r]:04d}.png")
    counts[LABELS[c]] = len(rows)
  return counts


def write_images(split: Split, directory: str | os.PathLike, count: int) -> list[Path]:
  """Writes the first `count` images of `split` (cycling through the classes)
  as `digit<label>_<row>.png` into one folder, for quickstarts and tests."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  by_class = [list(np.flatnonzero(split.labels == c)) for c in range(NUM_CLASSES)]
  paths = []
  for i in range(count):
    rows = by_class[i % NUM_CLASSES]
    r = rows[(i // NUM_CLASSES) % len(rows)]
    path = directory / f"digit{LABELS[split.labels[r]]}_{split.indices[r]:04d}.png"
    Image.fromarray(split.images[r]).save(path)
    paths.append(path)
  return paths


def preprocess(pixels: jnp.ndarray) -> jnp.ndarray:
  """uint8 pixels -> [-1, 1], exactly the serving graph's scaling."""
  return (pixels.astype(jnp.float32) - 127.5) / 127.5


def shift(images: np.ndarray, rng: np.random.RandomState, max_shift: int) -> np.ndarray:
  """Translates each image by up to `max_shift` pixels per axis (zero fill)."""
  if max_shift == 0:
    return images
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
  offsets = rng.randint(0, 2 * m + 1, size=(len(images), 2))
  size = images.shape[1]
  return np.stack([padded[i, dy:dy + size, dx:dx + size]
                   for i, (dy, dx) in enumerate(offsets)])


def accuracy(model: Any, params: Any, split: Split, batch_size: int = 512) -> float:
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, preprocess(x)), -1))
  correct = 0
  for start in range(0, len(split.labels), batch_size):
    pred = predict(params, split.images[start:start + batch_size])
    correct += int(np.sum(np.asarray(pred) == split.labels[start:start + batch_size]))
  return correct / len(split.labels)


def train(recipe: Recipe, data: tuple[Split, Split] | None = None, *,
          log: Callable[[str], None] = lambda _: None) -> Trained:
  """Trains `CONFIG` from scratch with AdamW and a warmup-cosine schedule."""
  started = time.perf_counter()
  train_split, test_split = data or load()
  model = build_model(CONFIG)
  size = train_split.images.shape[1]
  params = model.init(jax.random.PRNGKey(recipe.seed),
                      jnp.zeros((1, size, size, 3), jnp.float32))["params"]
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, recipe.peak_learning_rate, int(recipe.steps * recipe.warmup_fraction),
      recipe.steps)
  optimizer = optax.adamw(schedule, weight_decay=recipe.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params: Any, opt_state: Any, images: jnp.ndarray, labels: jnp.ndarray
           ) -> tuple[Any, Any, jnp.ndarray]:
    def loss_fn(p: Any) -> jnp.ndarray:
      logits = model.apply({"params": p}, preprocess(images), train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.RandomState(recipe.seed)
  order = np.empty(0, np.int64)
  losses = []
  for i in range(recipe.steps):
    if len(order) < recipe.batch_size:  # epochs of fresh permutations
      order = np.concatenate([order, rng.permutation(len(train_split.labels))])
    batch, order = order[:recipe.batch_size], order[recipe.batch_size:]
    images = shift(train_split.images[batch], rng, recipe.max_shift)
    params, opt_state, loss = step(params, opt_state, images, train_split.labels[batch])
    losses.append(loss)
    if (i + 1) % max(1, recipe.steps // 5) == 0:
      log(f"  step {i + 1}/{recipe.steps}  loss {float(loss):.4f}  "
          f"{time.perf_counter() - started:.1f}s")
  params = jax.device_get(params)
  return Trained(
      params=params,
      test_accuracy=accuracy(model, params, test_split),
      train_accuracy=accuracy(model, params, train_split),
      final_loss=float(np.mean([float(v) for v in losses[-50:]])),
      seconds=time.perf_counter() - started)
