"""A small augreg index.csv (the real one's columns and spellings), for the
tests of the augreg index, the zoo and the downloads."""

from __future__ import annotations

import csv
import io

from export import augreg


def _row(name, ds, aug, adapt_ds, res, val, test, *, wd=0.1, do=0.0, sd=0.0, adapt_lr=0.01,
         params=86567656, speed=658.7):
  prefix = name.replace("/", "_").replace("+", "_")
  filename = f"{prefix}-{ds}-300ep-lr_0.001-aug_{aug}-wd_{wd}-do_{do}-sd_{sd}"
  return {
      "name": name, "ds": ds, "lr": "0.001", "aug": aug, "wd": str(wd), "do": str(do),
      "sd": str(sd), "best_val": "0.4767", "final_val": "0.4733", "final_test": "0.4712",
      "adapt_ds": adapt_ds, "adapt_lr": str(adapt_lr), "adapt_steps": "20000",
      "adapt_resolution": str(res), "adapt_final_val": str(val),
      "adapt_final_test": str(test), "params": str(params),
      "infer_samples_per_sec": str(speed), "filename": filename,
      "adapt_filename": f"{filename}--{adapt_ds}-steps_20k-lr_{adapt_lr}-res_{res}",
  }


# Realistic rows in the real column order. S/16's best score equals a worse
# R26+S/32 row's score (the tie that broke the seed's notebook); B/32 has two
# fine-tunes with equal test scores; other data sets and resolutions must be
# ignored.
INDEX_ROWS = [
    _row("B/16", "i21k", "medium1", "imagenet2012", 224, 0.8478, 0.84018),
    _row("B/16", "i21k", "light1", "imagenet2012", 224, 0.8401, 0.83502),
    _row("B/16", "i21k", "medium1", "imagenet2012", 384, 0.8560, 0.85490),
    _row("B/16", "i1k", "medium2", "imagenet2012", 224, 0.7920, 0.79100),
    _row("B/16", "i21k", "medium1", "cifar100", 224, 0.9301, 0.92870),
    _row("S/16", "i21k", "light1", "imagenet2012", 224, 0.8102, 0.80462, wd=0.03,
         adapt_lr=0.03, params=22050664, speed=1508.6),
    _row("S/16", "i21k", "medium1", "imagenet2012", 224, 0.7990, 0.79110, wd=0.03,
         params=22050664, speed=1508.6),
    _row("R26+S/32", "i21k", "light0", "imagenet2012", 224, 0.8150, 0.80944, wd=0.03,
         do=0.1, sd=0.1, adapt_lr=0.03, params=36433000, speed=1814.1),
    _row("R26+S/32", "i21k", "medium2", "imagenet2012", 224, 0.8101, 0.80462, wd=0.03,
         adapt_lr=0.03, params=36433000, speed=1814.1),
    _row("R26+S/32", "i21k", "none", "imagenet2012", 224, 0.7850, 0.78020, params=36433000),
    _row("B/32", "i21k", "medium1", "imagenet2012", 224, 0.8000, 0.79436, wd=0.03,
         adapt_lr=0.03, params=88224232, speed=3120.2),
    _row("B/32", "i21k", "light1", "imagenet2012", 224, 0.8100, 0.79436, params=88224232,
         speed=3120.2),
]


def index_csv(rows=INDEX_ROWS, drop=()) -> str:
  columns = [c for c in augreg.COLUMNS if c not in drop]
  out = io.StringIO()
  writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()
