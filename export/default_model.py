"""The bundle's default model: trained here, cached, exported like any checkpoint.

  python -m export.default_model --repo models [--model-config models.config]
                                 [--model default|B/16|<augreg name>|...]
                                 [--cache-dir DIR] [--name NAME]
                                 [--warmup-batch-sizes 1,2,4,8]
  python -m export.default_model --write-images DIR [--count N]
  python -m export.default_model --write-class-folders DIR [--count N]

With `--model default` (the default) two versions of a small ViT are trained
on scikit-learn's digits (`export.digits`; no download, so `make export` works
offline) and published as the classifier `vit_digits`: version 1 from a short
run, version 2 from a longer, better one, so the A/B switch compares two real
models. Each run is saved in the ORIGINAL checkpoint format with a config
JSON next to it and then goes through exactly the path of a released
checkpoint: `export.export_checkpoint` (load -> Flax -> jax2tf -> verify ->
atomic publish -> models.config).

Training is cached in `<cache>/<run>-<key>/` (default `.cache/default_model/`
in the project, or $VIT_DEFAULT_MODEL_CACHE, or --cache-dir); the key hashes
the config, the recipe, the library versions and the source of the modules
that decide the weights, so a change to any of them retrains and nothing else
does. A run that is already published is not exported again (the exporter's
rule: a version whose manifest records the same export fingerprint, i.e. the
same checkpoint sha256 and options), so running the command twice adds no
versions.

Any other `--model` is a real checkpoint name (seed model, augreg name, URL or
path) and is delegated to `export_checkpoint`, published under a name derived
from it (`B/16` -> `vit_b_16`), likewise not exported twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from export import download, quiet, steplog
from export.__main__ import batch_size_list

MODEL_NAME = "vit_digits"
CACHE_ENV = "VIT_DEFAULT_MODEL_CACHE"


def parse_args(argv: list[str]) -> argparse.Namespace:
  """Needs nothing heavy, so `--help` answers before JAX and TensorFlow load."""
  p = argparse.ArgumentParser(
      prog="python -m export.default_model",
      description="Train (or reuse) and export the default model, or export a named "
                  "model; or write held-out digit images.")
  p.add_argument("--repo", metavar="DIR", help="model repository, e.g. models")
  p.add_argument("--model", default="default",
                 help="'default' (the digits ViT), or a checkpoint name such as B/16")
  p.add_argument("--name", help=f"model name in the repository (default {MODEL_NAME!r}, "
                                "or derived from --model)")
  p.add_argument("--kind", choices=("classifier", "features"), default="classifier",
                 help="export classifiers (default) or feature extractors (named "
                      "<name>_features), e.g. to fine-tune with python -m export.finetune")
  p.add_argument("--model-config", metavar="FILE",
                 help="models.config to add the model to (default: models.config in "
                      "the parent directory of --repo)")
  p.add_argument("--cache-dir", metavar="DIR",
                 help=f"training cache (default ${CACHE_ENV} or .cache/default_model)")
  p.add_argument("--warmup-batch-sizes", type=batch_size_list, default=(1, 2, 4, 8),
                 metavar="B,B,...",
                 help="serving_default batch sizes in each new version's warmup file "
                      "(default 1,2,4,8; 1,2,4,8,16,32 for the GPU batching config); "
                      "versions already published keep theirs")
  p.add_argument("--write-images", metavar="DIR",
                 help="write held-out digit PNGs into DIR instead of exporting")
  p.add_argument("--write-class-folders", metavar="DIR",
                 help="write training digits as DIR/<label>/*.png (an image folder for "
                      "python -m export.finetune) instead of exporting")
  p.add_argument("--count", type=int, default=10,
                 help="images for --write-images; per class for --write-class-folders")
  p.add_argument("-v", "--verbose", action="store_true", help=quiet.VERBOSE_HELP)
  args = p.parse_args(argv)
  if args.write_images is None and args.write_class_folders is None and args.repo is None:
    p.error("--repo is required (or --write-images / --write-class-folders DIR)")
  if args.count < 1:
    p.error("--count must be positive")
  return args


if TYPE_CHECKING:  # JAX and TensorFlow are imported by the functions that use them
  from export.digits import Recipe
  from export.exporter import ModelConfigFile

_PROJECT = Path(__file__).resolve().parent.parent
# The modules whose code decides the trained weights and the checkpoint bytes.
_KEYED_SOURCES = ("digits.py", "models.py", "configs.py", "checkpoint.py")
_KEYED_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "pillow")

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class CachedRun:
  """One trained run in the cache."""
  directory: Path
  info: dict
  cached: bool          # True when it was found, False when trained just now

  @property
  def checkpoint(self) -> Path:
    return self.directory / "checkpoint.npz"

  @property
  def config(self) -> Path:
    return self.directory / "config.json"


def default_cache_dir() -> Path:
  return Path(os.environ.get(CACHE_ENV) or _PROJECT / ".cache" / "default_model")


def cache_key(recipe: Recipe) -> str:
  """sha256 over everything that decides a run's checkpoint bytes."""
  from export import digits

  digest = hashlib.sha256()
  spec = {"config": digits.CONFIG.to_dict(), "recipe": dataclasses.asdict(recipe),
          "image_size": digits.IMAGE_SIZE, "labels": digits.LABELS,
          "split": [digits.SPLIT_SEED, digits.TEST_FRACTION],
          "libraries": {lib: importlib.metadata.version(lib) for lib in _KEYED_LIBRARIES}}
  digest.update(json.dumps(spec, sort_keys=True).encode())
  for name in _KEYED_SOURCES:
    digest.update(name.encode() + b"\0" + (_PROJECT / "export" / name).read_bytes())
  return digest.hexdigest()


def trained_run(run: str, cache_dir: str | os.PathLike | None = None, *,
                log: Log = print) -> CachedRun:
  """The cached run, training it first when it is not in the cache."""
  from export import digits
  from export.checkpoint import save_checkpoint

  recipe = digits.RUNS[run]
  cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  key = cache_key(recipe)
  directory = cache_dir / f"{run}-{key[:16]}"
  info_file = directory / "training.json"
  if info_file.is_file():
    info = json.loads(info_file.read_text())
    log(f"{run}: cached in {directory} (test accuracy {info['test_accuracy']:.4f})")
    return CachedRun(directory, info, cached=True)

  log(f"{run}: training {recipe.steps} steps (cache miss, key {key[:16]}) ...")
  train_split, test_split = digits.load()
  result = digits.train(recipe, (train_split, test_split), log=log)
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{run}-", dir=cache_dir))
  try:
    save_checkpoint(result.params, tmp / "checkpoint.npz")
    (tmp / "config.json").write_text(json.dumps(digits.CONFIG.to_dict(), indent=2) + "\n")
    info = {
        "run": run, "cache_key": key, "recipe": dataclasses.asdict(recipe),
        "config": digits.CONFIG.to_dict(), "labels": digits.LABELS,
        "data": {"dataset": "sklearn.datasets.load_digits",
                 "image_size": digits.IMAGE_SIZE, "split_seed": digits.SPLIT_SEED,
                 "test_fraction": digits.TEST_FRACTION,
                 "train_examples": len(train_split.labels),
                 "test_examples": len(test_split.labels),
                 "test_indices": [int(i) for i in test_split.indices]},
        "test_accuracy": result.test_accuracy,
        "train_accuracy": result.train_accuracy,
        "final_loss": result.final_loss,
        "train_seconds": round(result.seconds, 1),
        "checkpoint_sha256": download.sha256(tmp / "checkpoint.npz"),
        "libraries": {lib: importlib.metadata.version(lib) for lib in _KEYED_LIBRARIES},
    }
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    try:
      os.rename(tmp, directory)
    except OSError:  # a concurrent run finished first; its result is identical
      shutil.rmtree(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(f"{run}: trained in {result.seconds:.1f}s, test accuracy "
      f"{result.test_accuracy:.4f} ({len(test_split.labels)} held-out images)")
  return CachedRun(directory, info, cached=False)


def model_name_for(checkpoint: str) -> str:
  """A repository name for a checkpoint name: `B/16` -> `vit_b_16`,
  `R26+S/32` -> `vit_r26_s_32`, a path or URL -> its file stem."""
  if download.is_remote(checkpoint) or (os.sep in checkpoint and os.path.exists(checkpoint)):
    checkpoint = Path(checkpoint.rstrip("/")).name
  checkpoint = re.sub(r"\.npz$", "", checkpoint)
  slug = re.sub(r"[^a-z0-9]+", "_", checkpoint.lower()).strip("_")
  return slug if slug.startswith("vit") else f"vit_{slug}"


def export_default(repo: str | os.PathLike, *, model_config_file: ModelConfigFile,
                   name: str = MODEL_NAME, cache_dir: str | os.PathLike | None = None,
                   kind: str = "classifier", warmup_batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
                   log: Log = print) -> list[Path | str]:
  """Trains (or reuses) both runs and publishes the ones not yet published
  (the exporter's rule: a version with the same export fingerprint). Returns
  the version directories, new or already present, in run order."""
  from export import digits
  from export.exporter import export_checkpoint

  paths = []
  for run in digits.RUNS:
    cached = trained_run(run, cache_dir, log=log)
    started = time.perf_counter()
    path = export_checkpoint(os.fspath(cached.checkpoint), name, repo,
                             config=os.fspath(cached.config), image_size=digits.IMAGE_SIZE,
                             kind=kind,
                             labels=digits.LABELS if kind == "classifier" else None,
                             warmup_batch_sizes=warmup_batch_sizes,
                             model_config_file=model_config_file)
    log(f"{run}: {path} ({time.perf_counter() - started:.1f}s)")
    paths.append(path)
  return paths


def export_named(checkpoint: str, repo: str | os.PathLike, *,
                 model_config_file: ModelConfigFile, name: str | None = None,
                 kind: str = "classifier", warmup_batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
                 log: Log = print) -> Path | str:
  """Exports a real checkpoint by name, unless the exporter finds the same
  export already published."""
  from export.exporter import export_checkpoint

  name = name or model_name_for(checkpoint) + ("_features" if kind == "features" else "")
  started = time.perf_counter()
  path = export_checkpoint(checkpoint, name, repo, kind=kind,
                           warmup_batch_sizes=warmup_batch_sizes,
                           model_config_file=model_config_file)
  log(f"{checkpoint}: {path} ({time.perf_counter() - started:.1f}s)")
  return path


def write_images(directory: str | os.PathLike, count: int) -> list[Path]:
  """Writes `count` held-out digits as 32x32 RGB PNGs (never seen in training)."""
  from export import digits

  _, test_split = digits.load()
  return digits.write_images(test_split, directory, count)


def main(argv: list[str]) -> int:
  """The command line: parses the arguments before anything heavy is imported."""
  args = parse_args(argv)
  quiet.import_tensorflow(args.verbose)
  return run(args)


def run(args: argparse.Namespace) -> int:
  """The command line's work, for arguments already parsed."""
  from export import digits

  if args.write_images is not None:
    for path in write_images(args.write_images, args.count):
      print(path)
    return 0
  if args.write_class_folders is not None:
    train_split, _ = digits.load()
    counts = digits.write_image_folder(train_split, args.write_class_folders,
                                       per_class=args.count)
    print(f"{sum(counts.values())} images in {len(counts)} class folders under "
          f"{args.write_class_folders}")
    return 0

  from export import CheckpointError, exporter, repository
  from export.download import DownloadError

  def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

  config = args.model_config or exporter.DEFAULT_MODEL_CONFIG
  started = time.perf_counter()
  try:
    with steplog.on_stderr():
      if args.model == "default":
        suffix = "_features" if args.kind == "features" else ""
        paths = export_default(args.repo, model_config_file=config,
                               name=args.name or MODEL_NAME + suffix,
                               cache_dir=args.cache_dir, kind=args.kind,
                               warmup_batch_sizes=args.warmup_batch_sizes, log=log)
      else:
        paths = [export_named(args.model, args.repo, model_config_file=config,
                              name=args.name, kind=args.kind,
                              warmup_batch_sizes=args.warmup_batch_sizes, log=log)]
  except (CheckpointError, DownloadError, exporter.ExportError, repository.PublishError,
          OSError, KeyError, ValueError) as e:
    log(f"error: {e}")
    return 1
  except KeyboardInterrupt:
    log("interrupted; no partial version was published")
    return 130
  log(f"done in {time.perf_counter() - started:.1f}s")
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
