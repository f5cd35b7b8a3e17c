"""The "How to train your ViT?" (augreg) checkpoints: names and index.

gs://vit_models/augreg/ holds ~50k checkpoints whose file names spell out how
they were made, so a name alone fixes the model config, the serving
resolution and the label set:

  {model}-{ds}-{epochs}ep-lr_{lr}-aug_{aug}-wd_{wd}-do_{do}-sd_{sd}
      a pre-trained checkpoint, e.g. B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0
  ...--{adapt_ds}-steps_{k}k-lr_{lr}-res_{res}
      the same checkpoint fine-tuned on `adapt_ds` at `res` pixels

`index.csv` in the same bucket lists every (pre-training, fine-tuning) pair
with its scores. `select_best` picks the best fine-tune of each model; it
groups by model first, so equal scores of different models cannot pull in
each other's rows (the seed's notebook matched rows by score value across
models, and a tie selected a second, worse checkpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable

from export import configs, download

BUCKET = "gs://vit_models/augreg"
INDEX_URL = f"{BUCKET}/index.csv"
PRETRAIN_RESOLUTION = 224

# Label set of a pre-training data set (index column `ds`).
_PRETRAIN_LABELS = {"i1k": "imagenet2012", "i21k": "imagenet21k", "i21k_30": "imagenet21k"}

_NUM = r"\d+(?:\.\d+)?(?:e-?\d+)?"
_PRETRAIN = re.compile(
    rf"(?P<model>[A-Za-z0-9_]+?)-(?P<ds>i1k|i21k(?:_30)?)-(?P<epochs>\d+)ep"
    rf"-lr_(?P<lr>{_NUM})-aug_(?P<aug>[a-z]+\d*)-wd_(?P<wd>{_NUM})"
    rf"-do_(?P<do>{_NUM})-sd_(?P<sd>{_NUM})")
_ADAPT = re.compile(
    rf"(?P<adapt_ds>[A-Za-z0-9_.\-]+?)-steps_(?P<steps>\d+)k-lr_(?P<lr>{_NUM})-res_(?P<res>\d+)")
# Enough of the grammar to tell an augreg name (maybe malformed) from a path.
_LOOKS_AUGREG = re.compile(r"^[A-Za-z0-9_]+-i(?:1|21)k[^/]*-\d+ep-lr_")


class AugregNameError(ValueError):
  """A string in the shape of an augreg name that does not parse."""


class IndexFormatError(ValueError):
  """index.csv lacks columns or holds unreadable values."""


@dataclasses.dataclass(frozen=True)
class Pretraining:
  model: str        # augreg model prefix, e.g. "B_16", "R26_S_32"
  ds: str           # "i1k", "i21k" (300 epochs) or "i21k_30" (30 epochs)
  epochs: int
  lr: float
  aug: str          # "none", "light0", "light1", "medium1", "medium2", "strong1", ...
  wd: float
  do: float
  sd: float


@dataclasses.dataclass(frozen=True)
class Finetuning:
  adapt_ds: str     # e.g. "imagenet2012", "cifar100", "oxford_iiit_pet"
  steps_k: int      # thousands of steps, as written in the name (0 = under 1k)
  lr: float
  resolution: int


@dataclasses.dataclass(frozen=True)
class AugregName:
  """A parsed augreg checkpoint name."""
  name: str                          # without .npz
  model: str                         # registry key of export.configs, e.g. "B/16"
  pretraining: Pretraining
  finetuning: Finetuning | None

  @property
  def source(self) -> str:
    return f"{BUCKET}/{self.name}.npz"

  @property
  def image_size(self) -> int:
    return self.finetuning.resolution if self.finetuning else PRETRAIN_RESOLUTION

  @property
  def label_set(self) -> str:
    if self.finetuning:
      return self.finetuning.adapt_ds
    return _PRETRAIN_LABELS[self.pretraining.ds]

  def as_dict(self) -> dict[str, Any]:
    return {"name": self.name, "model": self.model,
            "pretraining": dataclasses.asdict(self.pretraining),
            "finetuning": dataclasses.asdict(self.finetuning) if self.finetuning else None,
            "image_size": self.image_size, "label_set": self.label_set}


def looks_like_name(s: str) -> bool:
  """True for strings shaped like an augreg name (a file name or bare)."""
  return bool(_LOOKS_AUGREG.match(Path(s).name))


def parse_name(name: str) -> AugregName:
  """Parses an augreg checkpoint name (bare or a file name, with or without
  .npz). Raises AugregNameError naming what is wrong."""
  stem = Path(name).name
  stem = stem[:-len(".npz")] if stem.endswith(".npz") else stem
  pre, sep, adapt = stem.partition("--")
  m = _PRETRAIN.fullmatch(pre)
  if not m:
    raise AugregNameError(
        f"{name!r} is not an augreg checkpoint name: expected "
        "{model}-{ds}-{epochs}ep-lr_{lr}-aug_{aug}-wd_{wd}-do_{do}-sd_{sd}"
        "[--{adapt_ds}-steps_{k}k-lr_{lr}-res_{res}], e.g. "
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0")
  model = configs.canonical_name(m["model"])
  if model is None:
    raise AugregNameError(f"{name!r}: unknown augreg model {m['model']!r}; known: "
                          f"{', '.join(_augreg_prefixes())}")
  ds, epochs = m["ds"], int(m["epochs"])
  if ds == "i21k" and epochs == 30:
    ds = "i21k_30"  # index.csv's name for the 30-epoch ImageNet-21k runs
  pretraining = Pretraining(model=m["model"], ds=ds, epochs=epochs, lr=float(m["lr"]),
                            aug=m["aug"], wd=float(m["wd"]), do=float(m["do"]),
                            sd=float(m["sd"]))
  finetuning = None
  if sep:
    a = _ADAPT.fullmatch(adapt)
    if not a:
      raise AugregNameError(f"{name!r}: the fine-tuning part {adapt!r} is not "
                            "{adapt_ds}-steps_{k}k-lr_{lr}-res_{res}")
    finetuning = Finetuning(adapt_ds=a["adapt_ds"], steps_k=int(a["steps"]),
                            lr=float(a["lr"]), resolution=int(a["res"]))
  return AugregName(name=stem, model=model, pretraining=pretraining, finetuning=finetuning)


def _augreg_prefixes() -> list[str]:
  return [key.replace("/", "_").replace("+", "_") for key in configs.MODELS]


# --- index.csv ---------------------------------------------------------------

COLUMNS = ("name", "ds", "lr", "aug", "wd", "do", "sd", "best_val", "final_val",
           "final_test", "adapt_ds", "adapt_lr", "adapt_steps", "adapt_resolution",
           "adapt_final_val", "adapt_final_test", "params", "infer_samples_per_sec",
           "filename", "adapt_filename")
_INTS = ("adapt_steps", "adapt_resolution", "params")
_FLOATS = ("lr", "wd", "do", "sd", "best_val", "final_val", "final_test", "adapt_lr",
           "adapt_final_val", "adapt_final_test", "infer_samples_per_sec")

Row = dict[str, Any]


def read_index(src: str = INDEX_URL) -> list[Row]:
  """The rows of index.csv from a local file or a (cached) URL, numeric
  columns converted; empty cells become None."""
  path = download.fetch(src)
  with open(path, newline="") as f:
    return parse_index(f, origin=src)


def parse_index(lines: Iterable[str], origin: str = "index.csv") -> list[Row]:
  reader = csv.DictReader(lines)
  missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
  if missing:
    raise IndexFormatError(f"{origin} is missing column(s): {', '.join(missing)} "
                           f"(has: {', '.join(reader.fieldnames or ()) or 'nothing'})")
  rows = []
  for line_no, raw in enumerate(reader, start=2):
    row: Row = dict(raw)
    for col in _INTS + _FLOATS:
      cell = (raw[col] or "").strip()
      try:
        row[col] = None if not cell else int(float(cell)) if col in _INTS else float(cell)
      except ValueError:
        raise IndexFormatError(f"{origin} line {line_no}: column {col} is not a "
                               f"number: {cell!r}") from None
    rows.append(row)
  return rows


def select_best(rows: Iterable[Row], ds: str = "i21k", adapt_ds: str = "imagenet2012",
                resolution: int = 224) -> list[Row]:
  """The best fine-tuned checkpoint of every model (column `name`) for one
  pre-training set, fine-tuning set and resolution, by adapt_final_test.

  Ties within a model go to the higher adapt_final_val, then to the first
  adapt_filename in sort order, so the answer does not depend on row order.
  Returns one row per model, best model first.
  """
  def key(row: Row) -> tuple:
    return (row["adapt_final_test"], row["adapt_final_val"] or 0.0)

  best: dict[str, Row] = {}
  for row in rows:
    if (row["ds"] != ds or row["adapt_ds"] != adapt_ds
        or row["adapt_resolution"] != resolution or row["adapt_final_test"] is None):
      continue
    current = best.get(row["name"])
    if (current is None or key(row) > key(current)
        or (key(row) == key(current) and row["adapt_filename"] < current["adapt_filename"])):
      best[row["name"]] = row
  return sorted(best.values(), key=lambda r: (-r["adapt_final_test"], r["name"]))
