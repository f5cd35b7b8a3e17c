"""Exports the representative set of `make check-tfserving` and its expectations.

The main-environment half of the check (the side half is
checks/tfserving_session.py). Each model of `MODELS` is exported with the
project's exporter (`export.export_checkpoint`, the code behind
`python -m export`), and its outputs are computed by the Flax model in JAX,
independently of the SavedModel, for:

  - requests on every signature at several batch sizes (`BATCH_SIZES`, which
    include sizes the warmup file does not, so XLA also compiles at serve
    time, and the empty batch), and
  - every record of the export's own warmup file, which TF Serving replays
    at load time.

The set is tiny (2 cores are enough) but covers what differs between
architectures in the converted graph: a class token with a representation
layer, global average pooling, a 2-stage ResNet stem (hybrid), a position
embedding resized for another serving size (from the golden reference
checkpoint in tests/data), and both kinds (classifier, features). Random
weights are written in the published .npz format, so the exporter reads them
as it reads released checkpoints.

  python -m checks.tfserving_prepare --out build/tfserving-check
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import export
from checks import tfserving_plan as plan
import contract
from export import exporter, repository
from export.checkpoint import load_checkpoint, save_checkpoint
from export.models import build_model

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (0, 1, 3, 8)
NUM_CLASSES = 10
_TINY = {"hidden_size": 32, "patches": {"size": [8, 8]},
         "transformer": {"mlp_dim": 64, "num_heads": 4, "num_layers": 2},
         "resnet": None, "classifier": "token", "representation_size": None}


@dataclasses.dataclass(frozen=True)
class Model:
  """One export of the set: where its checkpoint comes from and how it is served."""
  name: str
  kind: str
  config: export.ViTConfig
  image_size: int
  checkpoint: str | None = None  # a file under the repository; None: random weights
  seed: int = 0


def _tiny(**changes: Any) -> export.ViTConfig:
  return export.get_config({**_TINY, **changes})


def _reference_config(case: str) -> export.ViTConfig:
  return export.get_config(
      json.loads((ROOT / "tests/data/manifest.json").read_text())[case]["config"])


MODELS = (
    Model("vit_token_repr", "classifier", _tiny(representation_size=16), 32, seed=1),
    Model("vit_gap", "features", _tiny(classifier="gap"), 32, seed=2),
    # Stem stride 4, second stage stride 2, 1x1 patches: a 4x4 grid at 32.
    Model("hybrid_2stage", "classifier",
          _tiny(patches={"size": [1, 1]}, resnet={"num_layers": [1, 1], "width_factor": 1}),
          32, seed=3),
    # Trained at 32 (4x4 grid); served at 48, so the 6x6 posemb is resized.
    Model("vit_posemb_resized", "features", _reference_config("vit_a_token"), 48,
          checkpoint="tests/data/vit_a_token.npz"),
)


def random_checkpoint(model: Model, path: Path) -> None:
  """Random weights in the published format. Flax's init leaves the head at
  zero and norms at one; every array gets noise so no layer is a no-op."""
  cfg = model.config | {"num_classes": NUM_CLASSES}
  net = build_model(cfg)
  size = model.image_size
  params = net.init(jax.random.PRNGKey(model.seed), jnp.zeros((1, size, size, 3)))["params"]
  rng = np.random.default_rng(model.seed)
  params = jax.tree_util.tree_map(
      lambda a: np.asarray(a) + rng.normal(0, 0.2, np.shape(a)).astype(np.float32), params)
  save_checkpoint(params, path)


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _decode(encoded: bytes, size: int) -> np.ndarray:
  pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
  if pixels.shape != (size, size, 3):
    raise ValueError(f"warmup image of shape {pixels.shape}; the check expects {size}x{size} "
                     f"(no resize reference here)")
  return pixels


def _scale(pixels: np.ndarray) -> np.ndarray:
  center = np.float32(contract.PIXEL_CENTER)
  return (pixels.astype(np.float32) - center) / center


def model_inputs(signature: str, inputs: dict[str, np.ndarray], size: int) -> np.ndarray:
  """What the Flax model sees for a request: the contract's preprocessing
  steps (contract/__init__.py) done in numpy/PIL, not by the SavedModel."""
  row = contract.BY_NAME[signature]
  value = inputs[row.input_key]
  if contract.DECODE_RESIZE in row.steps:
    pixels = [_decode(bytes(b), size) for b in value.reshape(-1)]
    value = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
  if contract.SCALE in row.steps:
    return _scale(value)
  return value.astype(np.float32)


def _signature_input(row: contract.SignatureContract, floats: np.ndarray,
                     pixels: np.ndarray) -> np.ndarray:
  """A batch for one signature: floats in [-1, 1], raw pixels, or PNGs of them."""
  if row.steps == ():
    return floats
  if row.steps == (contract.SCALE,):
    return pixels
  if row.steps == (contract.DECODE_RESIZE, contract.SCALE):
    return np.array([_png(p) for p in pixels], dtype=object).reshape(len(pixels))
  raise ValueError(f"no check inputs for signature {row.name!r} (steps {row.steps})")


def check_requests(name: str, size: int, seed: int) -> list[Any]:
  """Every signature of the contract at every size of BATCH_SIZES,
  deterministic noise images."""
  rng = np.random.default_rng(seed)
  logs = []
  for b in BATCH_SIZES:
    floats = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
    pixels = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    logs += [plan.predict_log(name, row.name,
                              {row.input_key: _signature_input(row, floats, pixels)})
             for row in contract.SIGNATURES]
  return logs


def expected_outputs(apply: Any, images: np.ndarray, kind: str) -> dict[str, np.ndarray]:
  """The outputs the export must serve for `images`, from the JAX model. For a
  classifier: logits, and the softmax and top-k scores derived from them."""
  if not len(images):
    out = np.asarray(apply(np.zeros((1, *images.shape[1:]), np.float32)))[:0]
  else:
    out = np.asarray(apply(images))
  if kind == "features":
    return {contract.MODEL_OUTPUT[kind]: out}
  logits = out.astype(np.float64)
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
  k = min(contract.TOP_K, logits.shape[-1])
  return {contract.MODEL_OUTPUT[kind]: out, "probabilities": probabilities,
          "top_k_scores": -np.sort(-probabilities, axis=-1)[:, :k]}


def prepare_model(model: Model, out: Path) -> dict[str, Any]:
  """Exports one model, computes its expectations; returns its plan entry."""
  work = out / model.name
  work.mkdir(parents=True)
  if model.checkpoint is None:
    checkpoint = work / "checkpoint.npz"
    random_checkpoint(model, checkpoint)
  else:
    checkpoint = ROOT / model.checkpoint
  version_dir = Path(export.export_checkpoint(
      str(checkpoint), model.name, out / "models", config=model.config, kind=model.kind,
      image_size=model.image_size, model_config_file=None))

  features_only = model.kind == "features"
  params = load_checkpoint(str(checkpoint), model.config, model.image_size,
                           features_only=features_only)
  net = build_model(model.config, features_only=features_only)
  forward = jax.jit(lambda x: net.apply({"params": params}, x, train=False))
  size = model.image_size

  def expect(logs: list[Any]) -> list[dict[str, np.ndarray]]:
    return [expected_outputs(forward, model_inputs(*plan.request_inputs(log), size),
                             model.kind) for log in logs]

  requests = check_requests(model.name, size, model.seed)
  expected_check = expect(requests)
  expected_warmup = expect(list(plan.read_logs(version_dir / plan.WARMUP_FILE)))
  main = contract.MODEL_OUTPUT[model.kind]
  largest = max(float(np.max(np.abs(e[main]), initial=0.0))
                for e in expected_check + expected_warmup)
  # The exporter's own criterion (export/exporter.py verify()).
  tolerance = exporter.TOLERANCE * max(1.0, largest)
  return plan.write_model(work, name=model.name, version_dir=version_dir,
                          manifest=version_dir / repository.MANIFEST, tolerance=tolerance,
                          requests=requests, expected_check=expected_check,
                          expected_warmup=expected_warmup)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=ROOT / "build" / "tfserving-check",
                      help="working directory (replaced)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  started = time.perf_counter()
  shutil.rmtree(args.out, ignore_errors=True)
  args.out.mkdir(parents=True)
  entries = []
  for model in MODELS:
    t = time.perf_counter()
    entries.append(prepare_model(model, args.out))
    print(f"tfserving_prepare: {model.name} ({model.kind}, {model.image_size}px) exported "
          f"in {time.perf_counter() - t:.1f}s", file=sys.stderr)
  path = plan.write_plan(args.out, entries)
  print(f"tfserving_prepare: {path} ({len(entries)} models) in "
        f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
