"""Command line: `python -m clients predict|metadata|status|health|perf ...`.

    python -m clients predict --server HOST[:PORT] --model NAME
                              [--version N | --label L] [--rest] [--top-k K]
                              [--json] IMAGE...

IMAGE is a file or a directory (its image files, recursively, sorted). The
encoded files are sent as they are to the `predict_bytes` signature and the
server decodes and resizes them: a JPEG is typically 10-20x smaller on the
wire than the same image as float32 pixels (benchmarks/bench_clients.py),
and the preprocessing is then exactly the model's own. Large inputs go in
batches of --batch-size; only the model's top-k outputs are asked for. An
image that cannot be read or decoded is reported and the others still get
their results (the exit status is then 1). `perf` is a load generator
(clients.perf).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from clients import ClientError, connect
from clients.base import ENCODED, Client
from clients.batching import DEFAULT_BATCH_SIZE
from clients.cli_flags import add_connection_flags, add_model_flags, client_options, positive_int
from clients.results import TopK

# What TensorFlow's decode_image (the predict_bytes signature) decodes:
# "One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required".
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jxl", ".png", ".gif", ".bmp", ".webp"}
TOP_K_OUTPUTS = ("top_k_classes", "top_k_scores", "top_k_labels")


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    with connect(args.server, **client_options(args)) as client:
      return args.run(client, args)
  except ClientError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


@dataclasses.dataclass
class _Outcome:
  path: Path
  top_k: list[TopK] | None = None
  error: str = ""


def _predict(client: Client, args: argparse.Namespace) -> int:
  images = find_images(args.images)
  outputs = client.metadata(args.model, version=args.version, label=args.label
                            ).signatures[ENCODED.name].outputs
  wanted = [n for n in TOP_K_OUTPUTS if n in outputs] or ["probabilities"]
  outcomes: list[_Outcome] = []
  versions: set[int | None] = set()
  for start in range(0, len(images), args.batch_size):
    outcomes += _predict_chunk(client, args, images[start:start + args.batch_size], wanted,
                               versions)
  failed = [o for o in outcomes if o.error]
  for o in failed:
    print(f"error: {o.path}: {o.error}", file=sys.stderr)
  if args.json:
    print(json.dumps([{"image": str(o.path), "error": o.error} if o.error else
                      {"image": str(o.path),
                       "top_k": [{"class": t.class_id, "label": t.label, "score": t.score}
                                 for t in o.top_k or ()]} for o in outcomes], indent=1))
  else:
    version = (f"version {versions.pop()}" if len(versions) == 1 and None not in versions
               else "unknown version")
    print(f"# {args.model} {version} via {client.url}")
    print(f"# {'score':>8}  {'class':>5}  label")
    for o in outcomes:
      print(o.path if not o.error else f"{o.path}  (failed: {o.error})")
      for t in o.top_k or ():
        print(f"  {t.score:8.4f}  {t.class_id:5d}  {t.label}")
  return 1 if failed else 0


def _predict_chunk(client: Client, args: argparse.Namespace, paths: list[Path],
                   wanted: list[str], versions: set[int | None]) -> list[_Outcome]:
  """One batch of images; an unreadable or undecodable one fails alone."""
  outcomes = {p: _Outcome(p) for p in paths}
  readable: dict[Path, bytes] = {}
  for p in paths:
    try:
      readable[p] = p.read_bytes()
    except OSError as e:
      outcomes[p].error = e.strerror or str(e)

  def send(group: list[Path]) -> None:
    try:
      result = client.predict_encoded(args.model, [readable[p] for p in group],
                                      version=args.version, label=args.label,
                                      output_filter=wanted, progress=False)
    except ClientError as e:
      if e.code != "INVALID_ARGUMENT":
        raise
      if len(group) == 1:
        outcomes[group[0]].error = e.message
      else:  # one bad image fails the whole request: find it by sending each alone
        for p in group:
          send([p])
      return
    versions.add(result.model_version)
    for p, best in zip(group, result.top_k(args.top_k)):
      outcomes[p].top_k = best

  if readable:
    send(list(readable))
  return [outcomes[p] for p in paths]


def _metadata(client: Client, args: argparse.Namespace) -> int:
  metadata = client.metadata(args.model, version=args.version, label=args.label)
  print(json.dumps(dataclasses.asdict(metadata), indent=1))
  return 0


def _status(client: Client, args: argparse.Namespace) -> int:
  for s in client.status(args.model, version=args.version):
    error = f"  {s.error_code}: {s.error_message}" if s.error_message else ""
    print(f"{args.model}  version {s.version}  {s.state}{error}")
  return 0


def _health(client: Client, args: argparse.Namespace) -> int:
  live = client.is_server_live()
  print(f"server {client.url}: {'live' if live else 'not live'}")
  if not live or args.model is None:
    return 0 if live else 1
  ready = client.is_model_ready(args.model, version=args.version, label=args.label)
  print(f"model {args.model}: {'ready' if ready else 'not ready'}")
  return 0 if ready else 1


def find_images(paths: Sequence[str]) -> list[Path]:
  """The image files named, directories expanded (recursively, sorted)."""
  found: list[Path] = []
  for name in paths:
    path = Path(name)
    if path.is_dir():
      found += sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.exists():
      found.append(path)
    else:
      raise ValueError(f"{name}: no such file or directory")
  if not found:
    raise ValueError(f"no images in {' '.join(paths)}")
  return found


def _parser() -> argparse.ArgumentParser:
  from clients import perf
  parser = argparse.ArgumentParser(prog="python -m clients",
                                   description="Query a TF Serving model over gRPC or REST.")
  commands = parser.add_subparsers(dest="command", required=True)
  for name, run, summary in (("predict", _predict, "top-k classes of images"),
                             ("metadata", _metadata, "a model's signatures"),
                             ("status", _status, "the state of a model's versions"),
                             ("health", _health, "is the server live (and a model ready)?")):
    sub = commands.add_parser(name, help=summary, description=summary)
    sub.set_defaults(run=run, label=None)
    add_connection_flags(sub)
    add_model_flags(sub, required=name != "health", labels=name != "status")
    if name == "predict":
      sub.add_argument("--top-k", type=positive_int, default=None,
                       help="classes per image (default: all the model returns)")
      sub.add_argument("--json", action="store_true", help="print one JSON list")
      sub.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                       help=f"images per request (default {DEFAULT_BATCH_SIZE}: the largest "
                            "batch the CPU batching config of deploy/config/ accepts; a "
                            "smaller limit named by the server is adopted)")
      sub.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
  perf.add_parser(commands)
  return parser


if __name__ == "__main__":
  sys.exit(main())
