"""python -m export.zoo: list the named models, query the augreg index, and
show what a --checkpoint value resolves to.

  python -m export.zoo list [--json]
  python -m export.zoo select [--ds i21k] [--adapt-ds imagenet2012]
                              [--resolution 224] [--index FILE_OR_URL] [--json]
  python -m export.zoo resolve NAME [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from export import augreg, download, zoo

# Columns of `select`'s table, in print order; --json prints every column.
_SELECT_COLUMNS = ("name", "adapt_final_test", "adapt_final_val", "ds", "aug", "lr", "wd",
                   "do", "sd", "final_val", "adapt_lr", "adapt_steps", "adapt_resolution",
                   "params", "infer_samples_per_sec", "adapt_filename")


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  cells = [[str(c) for c in columns]]
  cells += [["" if r.get(c) is None else str(r[c]) for c in columns] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                   for row in cells)


def _list(args: argparse.Namespace) -> int:
  rows = zoo.entries()
  if args.json:
    print(json.dumps(rows, indent=2))
    return 0
  print(_table(rows, ("name", "kind", "imagenet_top1", "augmentation", "image_size",
                      "confirmed", "source")))
  print("\nExport one with: python -m export --checkpoint NAME --kind KIND --name ... "
        "--repo models")
  return 0


def _select(args: argparse.Namespace) -> int:
  rows = augreg.select_best(augreg.read_index(args.index), ds=args.ds,
                            adapt_ds=args.adapt_ds, resolution=args.resolution)
  if args.json:
    print(json.dumps(rows, indent=2))
  elif rows:
    print(_table(rows, _SELECT_COLUMNS))
  if not rows:
    print(f"no fine-tuned checkpoints for ds={args.ds} adapt_ds={args.adapt_ds} "
          f"resolution={args.resolution}", file=sys.stderr)
    return 1
  return 0


def _resolve(args: argparse.Namespace) -> int:
  r = zoo.resolve(args.name)
  info = {"source": r.source,
          "url": download.https_url(r.source) if download.is_remote(r.source) else None,
          "cache_path": str(download.cache_path(r.source))
          if download.is_remote(r.source) else None,
          "model": r.augreg_name.model if r.augreg_name else None,
          "image_size": r.image_size, "label_set": r.label_set, "sha256": r.sha256,
          "config": r.config.to_dict() if r.config else None,
          "augreg": r.augreg_name.as_dict() if r.augreg_name else None}
  if args.json:
    print(json.dumps(info, indent=2))
  else:
    for key in ("source", "url", "cache_path", "model", "image_size", "label_set"):
      print(f"{key:10s}  {'' if info[key] is None else info[key]}")
    if download.is_remote(r.source):
      print(f"{'sha256':10s}  {r.sha256 or 'unknown (recorded at download, checked on cache hits)'}")
    if r.augreg_name:
      print(f"{'recipe':10s}  {r.augreg_name.as_dict()['pretraining']}")
      print(f"{'finetune':10s}  {r.augreg_name.as_dict()['finetuning']}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m export.zoo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("list", help="the named models, as classifiers and feature extractors")
  p.add_argument("--json", action="store_true")
  p.set_defaults(run=_list)
  p = sub.add_parser("select", help="the best fine-tuned checkpoint of every model")
  p.add_argument("--ds", default="i21k", help="pre-training set: i1k, i21k or i21k_30")
  p.add_argument("--adapt-ds", default="imagenet2012", help="fine-tuning set")
  p.add_argument("--resolution", type=int, default=224, help="fine-tuning resolution")
  p.add_argument("--index", default=augreg.INDEX_URL,
                 help="index.csv: a local file or URL (downloaded once and cached)")
  p.add_argument("--json", action="store_true")
  p.set_defaults(run=_select)
  p = sub.add_parser("resolve", help="what a --checkpoint value stands for")
  p.add_argument("name", help="a short name, augreg name, URL or path")
  p.add_argument("--json", action="store_true")
  p.set_defaults(run=_resolve)
  args = parser.parse_args(argv)
  try:
    return args.run(args)
  except (download.DownloadError, augreg.AugregNameError, augreg.IndexFormatError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
