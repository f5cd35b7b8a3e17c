"""Command line: `python -m clients predict|metadata|status ...`.

    python -m clients predict --server HOST:PORT --model NAME
                              [--version N | --label L] [--rest] [--top-k K]
                              [--json] IMAGE...

IMAGE is a file or a directory (its image files, recursively, sorted). The
encoded files are sent as they are to the `predict_bytes` signature and the
server decodes and resizes them: a JPEG is typically 10-20x smaller on the
wire than the same image as float32 pixels (benchmarks/bench_clients.py),
and the preprocessing is then exactly the model's own. Large inputs go in
batches of --batch-size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from clients import ClientError, connect
from clients.base import Client
from clients.retry import RetryPolicy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp"}


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    with connect(args.server, rest=args.rest, timeout=args.timeout,
                 retry=RetryPolicy(attempts=args.attempts)) as client:
      return args.run(client, args)
  except ClientError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _predict(client: Client, args: argparse.Namespace) -> int:
  images = find_images(args.images)
  result = client.predict_encoded(args.model, [str(p) for p in images], version=args.version,
                                  label=args.label, batch_size=args.batch_size)
  top_k = result.top_k(args.top_k)
  if args.json:
    print(json.dumps([{"image": str(path),
                       "top_k": [{"class": t.class_id, "label": t.label, "score": t.score}
                                 for t in best]}
                      for path, best in zip(images, top_k)], indent=1))
    return 0
  version = "unknown version" if result.model_version is None else f"version {result.model_version}"
  print(f"# {args.model} {version} via {client.transport}://{client.target}")
  for path, best in zip(images, top_k):
    print(path)
    for t in best:
      print(f"  {t.score:8.4f}  {t.class_id:5d}  {t.label}")
  return 0


def _metadata(client: Client, args: argparse.Namespace) -> int:
  metadata = client.metadata(args.model, version=args.version, label=args.label)
  print(json.dumps(dataclasses.asdict(metadata), indent=1))
  return 0


def _status(client: Client, args: argparse.Namespace) -> int:
  for s in client.status(args.model, version=args.version):
    error = f"  {s.error_code}: {s.error_message}" if s.error_message else ""
    print(f"{args.model}  version {s.version}  {s.state}{error}")
  return 0


def find_images(paths: Sequence[str]) -> list[Path]:
  """The image files named, directories expanded (recursively, sorted)."""
  found: list[Path] = []
  for name in paths:
    path = Path(name)
    if path.is_dir():
      found += sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
      found.append(path)
    else:
      raise ValueError(f"{name}: no such file or directory")
  if not found:
    raise ValueError(f"no images in {' '.join(paths)}")
  return found


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m clients",
                                   description="Query a TF Serving model over gRPC or REST.")
  commands = parser.add_subparsers(dest="command", required=True)
  for name, run, summary in (("predict", _predict, "top-k classes of images"),
                             ("metadata", _metadata, "a model's signatures"),
                             ("status", _status, "the state of a model's versions")):
    sub = commands.add_parser(name, help=summary, description=summary)
    sub.set_defaults(run=run)
    sub.add_argument("--server", required=True, help="HOST:PORT (gRPC, or REST with --rest)")
    sub.add_argument("--model", required=True, help="model name")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a version number")
    if name != "status":
      which.add_argument("--label", help="a version label, e.g. stable or canary")
    sub.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    sub.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    sub.add_argument("--attempts", type=int, default=4,
                     help="tries when the server is unavailable (with backoff)")
    if name == "predict":
      sub.add_argument("--top-k", type=int, default=None,
                       help="classes per image (default: all the model returns)")
      sub.add_argument("--json", action="store_true", help="print one JSON list")
      sub.add_argument("--batch-size", type=int, default=8,
                       help="images per request (default 8: the largest batch the CPU "
                            "batching config of serving/config/ accepts)")
      sub.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
  return parser


if __name__ == "__main__":
  sys.exit(main())
