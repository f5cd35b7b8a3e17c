"""Named checkpoints: what a --checkpoint value stands for.

A checkpoint can be named four ways, and all of them end up as one source
(a local path or a URL that `export.download.fetch` understands) plus what
the name implies about the model:

  - a seed model's short name ("B/16", "R26+S/32-medium"; see `SEED_MODELS`,
    recorded with their provenance in export/data/seed_models.json),
  - an augreg checkpoint name, with or without .npz (any of the ~50k files in
    gs://vit_models/augreg/, parsed by `export.augreg.parse_name`),
  - a URL (http(s):// or gs://) or a local path, passed through; when its file
    name is an augreg name, the config and resolution are derived from it.

Every seed model is served as a classifier and, exported with --kind
features, as a feature extractor from the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import contract
from export import augreg, configs, download

KINDS = contract.KINDS
_SEED_FILE = Path(__file__).resolve().parent.parent / "data" / "seed_models.json"


class UnknownCheckpointError(FileNotFoundError):
  """A --checkpoint value that is no file, URL or known name. A
  FileNotFoundError, because for a path that is what it is."""


@dataclasses.dataclass(frozen=True)
class ResolvedCheckpoint:
  """What a --checkpoint value stands for."""
  source: str                             # local path, http(s):// or gs:// URL
  config: configs.ViTConfig | None = None    # implied by the name
  image_size: int | None = None           # serving resolution implied by the name
  label_set: str | None = None            # e.g. "imagenet2012", for the labels
  augreg_name: augreg.AugregName | None = None  # the parsed augreg name, if any
  sha256: str | None = None               # the published digest, where known


@dataclasses.dataclass(frozen=True)
class SeedModel:
  """One of the models the seed project published (a row of seed_models.json)."""
  name: str                 # short name, e.g. "B/16"
  model: str                # registry key of export.configs
  augmentation: str         # pre-training augmentation level: "light" or "medium"
  imagenet_top1: float      # ImageNet-1k top-1 [%] of the fine-tuned checkpoint
  filename: str             # augreg checkpoint name, without .npz
  filename_confirmed: bool  # False where no public source names the exact file
  note: str = ""
  sha256: str | None = None  # the published file's digest; None: unknown

  @property
  def source(self) -> str:
    return f"{augreg.BUCKET}/{self.filename}.npz"


def _load_seed_models() -> dict[str, SeedModel]:
  data = json.loads(_SEED_FILE.read_text())
  fields = {f.name for f in dataclasses.fields(SeedModel)}
  models = [SeedModel(**{k: v for k, v in row.items() if k in fields})
            for row in data["models"]]
  return {m.name: m for m in models}


SEED_MODELS: dict[str, SeedModel] = _load_seed_models()


def resolve(src: str) -> ResolvedCheckpoint:
  """Resolves a --checkpoint value (see the module docstring).

  Raises:
    augreg.AugregNameError: a bare name shaped like an augreg name that does
      not parse (e.g. an unknown model prefix).
    UnknownCheckpointError: anything else that is neither an existing file
      nor a URL; the message suggests the close seed names.
  """
  src = os.fspath(src)
  seed = SEED_MODELS.get(src)
  if seed is not None:
    return dataclasses.replace(_from_augreg(augreg.parse_name(seed.filename), seed.source),
                               sha256=seed.sha256)
  if download.is_remote(src) or os.path.exists(src):
    name = Path(src.split("?", 1)[0]).name
    if augreg.looks_like_name(name):
      try:
        return _from_augreg(augreg.parse_name(name), src)
      except augreg.AugregNameError:
        pass  # a file that merely looks like one: nothing is implied
    return ResolvedCheckpoint(source=src)
  if os.sep not in src and augreg.looks_like_name(src):
    parsed = augreg.parse_name(src)
    return _from_augreg(parsed, parsed.source)
  raise UnknownCheckpointError(_unknown(src))


# timm's names for the ViT sizes ("vit_base_patch16_224" is B/16 at 224 px),
# which people coming from timm or Hugging Face type first.
_TIMM_NAME = re.compile(r"vit_(tiny|small|base|large|huge)_patch(\d+)")
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}


def _squash(name: str) -> str:
  """Lower case without separators: "B/16", "b16" and "B-16" compare equal."""
  return re.sub(r"[^a-z0-9+]", "", name.lower())


def suggestions(name: str) -> list[str]:
  """Seed model names close to `name`, best first (at most 3); only the one
  that differs in case and separators when there is one."""
  squashed = {_squash(n): n for n in SEED_MODELS}
  if _squash(name) in squashed:
    return [squashed[_squash(name)]]
  out = []
  m = _TIMM_NAME.search(name.lower())
  if m:
    out.append(f"{_TIMM_SIZES[m.group(1)]}/{m.group(2)}")
  out += [squashed[s] for s in difflib.get_close_matches(_squash(name), squashed, n=3,
                                                         cutoff=0.6)]
  return [n for n in dict.fromkeys(out) if n in SEED_MODELS][:3]


def _unknown(src: str) -> str:
  """The error for an unresolvable value: a missing file when it looks like a
  path (seed names contain "/", so a slash alone does not make one)."""
  close = suggestions(src)
  hint = f"; did you mean {' or '.join(close)}?" if close else ""
  if src.endswith(".npz") or src.startswith((os.sep, ".", "~")):
    return f"{src}: no such file{hint}"
  return (f"{src!r} is not a checkpoint name, an existing file or a URL{hint} "
          f"(python -m export.zoo list shows the names)")


def _from_augreg(parsed: augreg.AugregName, source: str) -> ResolvedCheckpoint:
  return ResolvedCheckpoint(source=source, config=configs.get_config(parsed.model),
                            image_size=parsed.image_size, label_set=parsed.label_set,
                            augreg_name=parsed)


def entries() -> list[dict[str, Any]]:
  """Every named model in both kinds, best ImageNet top-1 first."""
  rows = []
  for seed in sorted(SEED_MODELS.values(), key=lambda m: -m.imagenet_top1):
    for kind in KINDS:
      rows.append({"name": seed.name, "kind": kind, "model": seed.model,
                   "augmentation": seed.augmentation, "imagenet_top1": seed.imagenet_top1,
                   "image_size": augreg.parse_name(seed.filename).image_size,
                   "source": seed.source, "confirmed": seed.filename_confirmed})
  return rows
