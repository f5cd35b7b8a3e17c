"""Checkpoint -> verified SavedModel version in a TF Serving model repository.

`export_checkpoint` is the whole pipeline behind `python -m export`:

  resolve + fetch the checkpoint, hash it (sha256), load it into the Flax
  model (position embedding resized for the serving size), convert with
  jax2tf (`export.signatures`), save into a temporary directory next to the
  versions, add `assets/labels.txt`, the warmup requests and the manifest,
  re-load the written SavedModel and compare every signature with the JAX
  model on the same images, and only then publish the version atomically and
  add the model to `models.config` (`export.repository`).

A `repo` given as a URL (`gs://bucket/models`, `s3://...`) is an object-storage
repository: the version is exported and verified in a local staging
repository as above, then published by `export.remote` (staging prefix,
server-side copies, `saved_model.pb` last), and models.config gets the full
URL as base_path. Whether an export is already published is decided by one
rule for both: a version whose manifest records this export's fingerprint
(`_Export.fingerprint`; `repository.matching_version`).

Each step is a function below, called in this order by `export_checkpoint`
(`_load`, `_class_names`, `repository.find_export`, `_write_version` with
`_save`, `warmup.write`, `_verify`, `_manifest`, `repository.publish`, then
`_register`). A verification difference above
`TOLERANCE * max(1, max |JAX output|)` stops the export before anything is
published. Steps are logged with their
durations to the "export" logger (the CLI prints them on stderr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import jax
import numpy as np
import tensorflow as tf

import contract
from export import download, labels as labels_lib, remote, repository, signatures, warmup, zoo
from export.checkpoint import flatten, load_checkpoint, native_image_size
from export.configs import ViTConfig, get_config
from export.models import build_model

log = logging.getLogger("export")

TOLERANCE = 2e-5
"""Max |SavedModel - JAX| allowed, relative to max(1, max |JAX output|).

Measured (float32, CPU): at most 1.2e-6 on the test checkpoints, 3.5e-7 on
the default model, 2.8e-6 in tensorflow/serving 2.20's TensorFlow
(make check-tfserving); a port with exact instead of tanh GELU is off by
1.1e-4 to 1.7e-4. 2e-5 leaves 7x headroom above the first and fails the
second by 5x (tests/export/test_exporter.py)."""


class _Default(enum.Enum):
  """Sentinels; a one-member enum, so type checkers see the exact value."""
  MODEL_CONFIG = "models.config next to the repository"


DEFAULT_MODEL_CONFIG = _Default.MODEL_CONFIG
"""`model_config_file` default: `models.config` in the parent of `repo`, or
in the current directory for an object-storage `repo` (None means none)."""

ModelConfigFile = str | os.PathLike | None | Literal[_Default.MODEL_CONFIG]

KINDS = contract.KINDS
_LIBRARIES = ("jax", "jaxlib", "flax", "tensorflow", "tensorflow-serving-api", "numpy")


class ExportError(RuntimeError):
  """The export cannot be made or failed verification; nothing was published."""


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
  log.info("%s ...", name)
  started = time.perf_counter()
  yield
  log.info("%s done in %.1fs", name, time.perf_counter() - started)


def read_labels(labels: Sequence[str] | str | os.PathLike, num_classes: int) -> list[str]:
  """Class names from a list or a file (one per line), checked against the head."""
  if isinstance(labels, (str, os.PathLike)):
    names = Path(labels).read_text(encoding="utf-8").splitlines()
    origin = os.fspath(labels)
  else:
    names = list(labels)
    origin = "the labels list"
  if len(names) != num_classes:
    raise ExportError(f"{origin} has {len(names)} labels, but the model has "
                      f"{num_classes} classes")
  bad = [n for n in names if "\n" in n or "\r" in n]
  if bad:
    raise ExportError(f"labels must not contain line breaks: {bad[:3]}")
  return names


def _test_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Verification inputs: float images in [-1, 1] and uint8 pixel images."""
  rng = np.random.default_rng(0)
  floats = rng.uniform(-1, 1, (2, image_size, image_size, 3)).astype(np.float32)
  pixels = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
  return floats, pixels


def _jax_reference(apply_fn: Any, params: Any, images: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(apply_fn)(params, images))


def verify(saved_model_dir: str | os.PathLike, apply_fn: Any, params: Any,
           image_size: int, output_key: str) -> dict[str, Any]:
  """Re-loads the SavedModel and compares every signature of the contract
  (`contract.SIGNATURES`) with the JAX model on the same images;
  returns the measured differences.

  A signature without preprocessing steps gets float images in [-1, 1]; the
  others get the same uint8 pixels (`signatures.example_input`: as they are,
  or PNG-encoded, lossless), whose JAX reference is the contract's scaling of
  those pixels (at size S the resize is the identity). All calls share one
  batch size, so the SavedModel compiles once.
  """
  floats, pixels = _test_images(image_size)
  scaled = signatures.example_input(contract.DEFAULT, pixels)
  reference = _jax_reference(apply_fn, params, np.concatenate([floats, scaled]))
  sigs = tf.saved_model.load(os.fspath(saved_model_dir)).signatures
  diffs = {}
  for spec in contract.SIGNATURES:
    if spec.steps:
      value, expected = signatures.example_input(spec, pixels), reference[len(floats):]
    else:
      value, expected = floats.astype(spec.dtype), reference[:len(floats)]
    got = sigs[spec.name](**{spec.input_key: tf.constant(value)})[output_key].numpy()
    diffs[spec.name] = (float(np.max(np.abs(got - expected)))
                        if got.shape == expected.shape else float("inf"))
  tolerance = TOLERANCE * max(1.0, float(np.max(np.abs(reference))))
  return {"max_abs_diff": max(diffs.values()), "per_signature": diffs,
          "tolerance": tolerance, "output": output_key,
          "images": len(floats) + len(pixels)}


def _library_versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for lib in _LIBRARIES:
    try:
      versions[lib] = importlib.metadata.version(lib)
    except importlib.metadata.PackageNotFoundError:
      versions[lib] = "not installed"
  return versions


@dataclasses.dataclass(frozen=True)
class _Checkpoint:
  """A checkpoint, fetched, hashed and loaded for one kind of export."""
  argument: str        # the --checkpoint value
  source: str          # what it resolved to (path or URL)
  local: Path          # the file read (the cache path for a URL)
  sha256: str
  cfg: ViTConfig       # num_classes from the head
  image_size: int      # the serving resolution
  params: Any
  label_set: str | None


@dataclasses.dataclass(frozen=True)
class _Export:
  """What one export writes, decided before anything is written."""
  name: str
  kind: str
  checkpoint: _Checkpoint
  names: list[str] | None  # class names (classifiers only)
  labels_from: str         # the labels file, "argument" or "default"
  batch_sizes: list[int]   # serving_default batch sizes of the warmup file

  @property
  def output_key(self) -> str:
    return contract.MODEL_OUTPUT[self.kind]

  @property
  def fingerprint(self) -> str:
    """sha256 of everything that determines the version's contents, so a
    retry of the same export finds the version an earlier run published."""
    what = {"name": self.name,  # the warmup requests name the model
            "checkpoint_sha256": self.checkpoint.sha256, "kind": self.kind,
            "image_size": self.checkpoint.image_size, "config": self.checkpoint.cfg.to_dict(),
            "labels": self.names, "warmup_batch_sizes": self.batch_sizes}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def export_checkpoint(checkpoint: str, name: str, repo: str | os.PathLike, *,
                      config: dict | str | None = None, image_size: int | None = None,
                      kind: str = "classifier",
                      labels: Sequence[str] | str | os.PathLike | None = None,
                      version: int | None = None,
                      model_config_file: ModelConfigFile = DEFAULT_MODEL_CONFIG,
                      warmup_batch_sizes: Sequence[int] = (1, 2, 4, 8)) -> Path | str:
  """Exports a checkpoint as `<repo>/<name>/<version>/`; returns that directory
  (its URL for an object-storage `repo`).

  Running the same export again (same checkpoint sha256 and options) returns
  the version the first run published, without exporting it again, and adds
  the models.config entry if that run could not.

  Args:
    checkpoint: a local .npz, an http(s):// or gs:// URL, or a zoo name.
    name: the model name (directory and models.config entry).
    repo: the model repository directory (created if missing), or the URL of
      an object-storage repository (`gs://bucket/models`, `s3://...`).
    config: a config dict, JSON path or registered name; default: the one the
      checkpoint name implies (`zoo.resolve`).
    image_size: serving resolution; default: implied by the name, else the
      checkpoint's own.
    kind: "classifier" or "features" (the pre_logits vector, fine-tunable).
    labels: class names (list or file, one per line; classifiers only);
      default `labels.default_labels`.
    version: the version number; default the next free one. Never overwrites.
    model_config_file: the models.config to add the model to; default
      `models.config` in the parent of `repo` (in the current directory for a
      URL); None leaves every config alone.
    warmup_batch_sizes: serving_default batch sizes in the warmup file.

  Raises:
    export.CheckpointError: the checkpoint cannot be read or does not fit.
    ExportError: bad arguments, or verification failed.
    repository.PublishError: the version exists, or models.config is unusable.
    repository.NotRegisteredError: the version was published but models.config
      could not be updated (its `target` is the version).
  """
  started = time.perf_counter()
  batch_sizes = _check_arguments(name, kind, labels, warmup_batch_sizes)
  store = remote.RemoteRepository(os.fspath(repo)) if download.is_remote(repo) else None
  config_path = _model_config_path(
      model_config_file,
      Path("models.config") if store else repository.default_model_config(repo))
  if config_path is not None:
    repository.check_model_config(config_path)  # fail before the slow part
  if store is not None and version is not None:
    store.check_free(name, version)  # likewise: object storage has no local check
  ckpt = _load(checkpoint, config, image_size, kind)
  job = _Export(name=name, kind=kind, checkpoint=ckpt, names=_class_names(ckpt, kind, labels),
                labels_from=_labels_from(labels), batch_sizes=batch_sizes)
  target = (store.find_export(name, job.fingerprint, version) if store else
            repository.find_export(Path(repo) / name, job.fingerprint, version))
  if target is not None:
    log.info("%s already holds this export (same checkpoint sha256 and options); "
             "not exporting it again", target)
  elif store is not None:
    target = _upload_version(job, store, version, started)
  else:
    target = _write_version(job, Path(repo), version, started)
  if config_path is not None:
    base_path = (store.model_url(name) if store else
                 repository.base_path_for(repo, name, config_path))
    _register(config_path, name, base_path, target)
  log.info("exported %s in %.1fs", target, time.perf_counter() - started)
  return target


def _check_arguments(name: str, kind: str, labels: Any,
                     warmup_batch_sizes: Sequence[int]) -> list[int]:
  """Rejects bad arguments before anything is read; returns the sorted,
  distinct warmup batch sizes."""
  if kind not in KINDS:
    raise ExportError(f"kind must be one of {KINDS}, got {kind!r}")
  if not name or name.startswith(".") or os.sep in name or name != name.strip():
    raise ExportError(f"bad model name {name!r}")
  if kind == "features" and labels is not None:
    raise ExportError("labels apply to classifiers only, not to --kind features")
  batch_sizes = sorted({int(b) for b in warmup_batch_sizes})
  if any(b < 1 for b in batch_sizes):
    raise ExportError(f"warmup batch sizes must be positive: {warmup_batch_sizes}")
  return batch_sizes


def _model_config_path(model_config_file: ModelConfigFile, default: Path) -> Path | None:
  if model_config_file is DEFAULT_MODEL_CONFIG:
    return default
  return None if model_config_file is None else Path(model_config_file)


def _load(checkpoint: str, config: dict | str | None, image_size: int | None,
          kind: str) -> _Checkpoint:
  """Resolves, fetches, hashes and loads the checkpoint."""
  resolved = zoo.resolve(checkpoint)
  if config is not None:
    cfg = get_config(config)
  elif resolved.config is not None:
    cfg = get_config(resolved.config)
  else:
    raise ExportError(f"no model config for {checkpoint!r}: pass --config or --model")
  image_size = image_size or resolved.image_size
  with _step(f"fetch {resolved.source}"):
    local = download.fetch(resolved.source, expected_sha256=resolved.sha256)
  with _step("sha256"):
    digest = download.sha256(local)
  with _step("load checkpoint"):
    params = load_checkpoint(os.fspath(local), cfg, image_size,
                             features_only=kind == "features")
  if kind == "classifier":
    if "head" not in params:
      raise ExportError(
          f"{checkpoint} has no classification head (no head/kernel and head/bias "
          f"arrays), which a classifier export needs: export it as a feature extractor "
          f"with --kind features (and fine-tune a head with python -m export.finetune)")
    cfg = cfg | {"num_classes": int(params["head"]["bias"].shape[-1])}
  return _Checkpoint(argument=checkpoint, source=resolved.source, local=local,
                     sha256=digest, cfg=cfg,
                     image_size=image_size or native_image_size(flatten(params), cfg),
                     params=params, label_set=resolved.label_set)


def _class_names(ckpt: _Checkpoint, kind: str,
                 labels: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
  """The classifier's class names: given, or the default for its label set."""
  if kind != "classifier":
    return None
  num_classes = ckpt.cfg.num_classes
  return read_labels(labels if labels is not None else
                     labels_lib.default_labels(num_classes, ckpt.label_set), num_classes)


def _labels_from(labels: Sequence[str] | str | os.PathLike | None) -> str:
  if isinstance(labels, (str, os.PathLike)):
    return os.fspath(labels)
  return "argument" if labels is not None else "default"


def _write_version(job: _Export, repo: Path, version: int | None, started: float) -> Path:
  """Writes, verifies and publishes a new version; on any failure nothing is
  left behind (not even the directories this export created)."""
  model_dir = repo / job.name
  created = [d for d in (repo, model_dir) if not d.exists()]
  model_dir.mkdir(parents=True, exist_ok=True)
  try:
    for stale in repository.remove_stale_temporaries(model_dir):
      log.info("removed %s, left by an interrupted export", stale)
    version = _free_version(model_dir, version)
    with repository.staging(model_dir) as tmp:
      _save(tmp, job)
      with _step("write warmup requests"):
        records = warmup.write(tmp / "assets.extra" / warmup.FILENAME, job.name,
                               job.checkpoint.image_size, job.batch_sizes)
      check = _verify(tmp, job)
      manifest = _manifest(job, version, records, check, started)
      (tmp / repository.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
      with _step(f"publish version {version}"):
        return repository.publish(tmp, model_dir, version)
  except BaseException:
    _remove_empty(created)
    raise


def _free_version(model_dir: Path, version: int | None) -> int:
  """`version`, or the next one; an existing version is never overwritten."""
  version = version if version is not None else repository.next_version(model_dir)
  if version < 0 or (model_dir / str(version)).exists():
    raise repository.PublishError(
        f"{model_dir / str(version)} exists already (or is not a valid version); "
        f"versions are never overwritten")
  return version


def _apply_fn(job: _Export) -> Callable[[Any, jax.Array], jax.Array]:
  model = build_model(job.checkpoint.cfg, features_only=job.kind == "features")

  def apply_fn(p: Any, x: jax.Array) -> jax.Array:
    return model.apply({"params": p}, x, train=False)
  return apply_fn


def _save(tmp: Path, job: _Export) -> None:
  """The converted SavedModel and its labels into `tmp`.

  TensorFlow reports file errors (a full disk, ...) as `tf.errors.OpError`,
  not OSError; they become an ExportError so the CLI says them in one line.
  """
  with _step("convert (jax2tf) and save"):
    obj, sigs = signatures.build_servable(_apply_fn(job), job.checkpoint.params,
                                          job.checkpoint.image_size, job.kind, job.names)
    try:
      tf.saved_model.save(obj, os.fspath(tmp), signatures=sigs)
    except tf.errors.OpError as e:
      raise ExportError(f"cannot write the SavedModel into {tmp.parent}: "
                        f"{e.message.splitlines()[0]}; nothing was published") from None
  if job.names is not None:
    (tmp / "assets").mkdir(exist_ok=True)
    (tmp / "assets" / "labels.txt").write_text("".join(n + "\n" for n in job.names),
                                               encoding="utf-8")
  (tmp / "assets.extra").mkdir()


def _verify(tmp: Path, job: _Export) -> dict[str, Any]:
  """`verify`, raising ExportError when a difference exceeds the tolerance."""
  with _step("verify SavedModel against JAX"):
    check = verify(tmp, _apply_fn(job), job.checkpoint.params, job.checkpoint.image_size,
                   job.output_key)
  log.info("max |SavedModel - JAX| = %.3g (tolerance %.3g)", check["max_abs_diff"],
           check["tolerance"])
  if not check["max_abs_diff"] <= check["tolerance"]:
    raise ExportError(
        f"verification failed: max |SavedModel - JAX| = {check['max_abs_diff']:.3g} > "
        f"{check['tolerance']:.3g} ({check['per_signature']}); nothing published")
  return check


def _manifest(job: _Export, version: int, records: int, check: dict[str, Any],
              started: float) -> dict[str, Any]:
  """`assets.extra/export_manifest.json`: where the version came from, how it
  was made and checked, and the fingerprint a retry looks for."""
  ckpt, size = job.checkpoint, job.checkpoint.image_size
  return {
      "name": job.name, "version": version, "kind": job.kind, "image_size": size,
      "config": ckpt.cfg.to_dict(),
      "checkpoint": {"argument": ckpt.argument, "source": ckpt.source,
                     "sha256": ckpt.sha256, "bytes": os.path.getsize(ckpt.local)},
      "num_classes": ckpt.cfg.num_classes if job.kind == "classifier" else None,
      "labels": {"count": len(job.names), "file": "assets/labels.txt",
                 "from": job.labels_from} if job.names is not None else None,
      "signatures": [spec.name for spec in contract.SIGNATURES],
      "preprocessing": "bilinear resize to image_size (half-pixel centers, no "
                       "antialias, no crop), then (x - 127.5) / 127.5",
      "jax2tf": {"native_serialization_platforms": list(signatures.PLATFORMS),
                 "polymorphic_shapes": f"(b, {size}, {size}, 3)",
                 "with_gradient": True},
      "warmup": {"file": f"assets.extra/{warmup.FILENAME}", "records": records,
                 "serving_default_batch_sizes": job.batch_sizes},
      "verification": check,
      "fingerprint": job.fingerprint,
      "libraries": _library_versions(),
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "export_seconds": round(time.perf_counter() - started, 1),
  }


def _register(config_path: Path, name: str, base_path: str, target: Path | str) -> None:
  """Adds the model to models.config; a failure says that the version IS
  published and how to finish (the retry does not export it again)."""
  try:
    if repository.ensure_model_entry(config_path, name, base_path):
      log.info("added %s to %s (base_path %s)", name, config_path, base_path)
  except repository.PublishError as e:
    raise repository.NotRegisteredError(
        f"{target} is published, but {name} could not be added to {config_path} "
        f"({e}); a server reading that file does not serve it yet. Run the same "
        f"command again once the cause is fixed (it finds this version and only "
        f"adds the entry), or add config {{ name: \"{name}\" base_path: "
        f"\"{base_path}\" model_platform: \"tensorflow\" }}", Path(target)) from None


def _upload_version(job: _Export, store: remote.RemoteRepository, version: int | None,
                    started: float) -> str:
  """`_write_version` into a local staging repository, then the upload
  (`remote.RemoteRepository.publish`); the version number comes from the
  remote listing."""
  version = version if version is not None else store.next_version(job.name)
  store.check_free(job.name, version)
  with tempfile.TemporaryDirectory(prefix="export-staging-") as staging:
    local = _write_version(job, Path(staging), version, started)
    with _step(f"upload version {version} to {store.model_url(job.name)}"):
      return store.publish(local, job.name, version)


def _remove_empty(dirs: list[Path]) -> None:
  """Removes the directories this export created, deepest first, if empty."""
  for d in reversed(dirs):
    with contextlib.suppress(OSError):
      d.rmdir()
