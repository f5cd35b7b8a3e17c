"""`python -m export`: a thin command line over `export.exporter.export_checkpoint`.

  python -m export --checkpoint SRC --name NAME --repo DIR|URL [--version N]
                   [--config CONFIG.json | --model MODEL] [--image-size S]
                   [--kind classifier|features] [--labels FILE]
                   [--model-config FILE] [--warmup-batch-sizes 1,2,4,8]

`--repo` may be an object-storage URL (s3://bucket/models; gs:// needs gcsfs,
which is not pinned): see export/remote.py. Progress (each step with its duration) goes to stderr;
the published version directory (or its URL) is printed on stdout. Exit
status:

  0  published (or found already published by an earlier run of the same
     export), and added to models.config
  1  the export failed; nothing was published
  2  bad arguments (checked before anything is read: unknown checkpoint
     names, missing files, unknown --model, ...)
  3  the version IS published (its directory is printed on stdout), but
     models.config could not be updated; run the same command again to add
     it (the version is not exported twice)
"""

from __future__ import annotations

import argparse
import os
import sys

from export import quiet, steplog


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m export",
      description="Export an original ViT checkpoint as a verified TF Serving SavedModel.")
  p.add_argument("--checkpoint", required=True, metavar="SRC",
                 help="local .npz, http(s):// or gs:// URL, or a checkpoint name")
  p.add_argument("--name", required=True, help="model name in the repository")
  p.add_argument("--repo", required=True, metavar="DIR|URL",
                 help="model repository, e.g. models, gs://bucket/models or "
                      "s3://bucket/models")
  p.add_argument("--version", type=int, metavar="N",
                 help="version number (default: the next free one; never overwrites)")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--config", metavar="CONFIG.json",
                     help="model config as JSON with the original field names")
  which.add_argument("--model", metavar="MODEL", help="a registered config, e.g. B/16")
  p.add_argument("--image-size", type=int, metavar="S",
                 help="serving resolution (default: implied by the name, else the "
                      "checkpoint's own)")
  p.add_argument("--kind", choices=("classifier", "features"), default="classifier")
  p.add_argument("--labels", metavar="FILE", help="class names, one per line")
  p.add_argument("--model-config", metavar="FILE",
                 help="models.config to add the model to (default: models.config in "
                      "the parent directory of --repo; in the current directory for a "
                      "URL)")
  p.add_argument("--warmup-batch-sizes", type=batch_size_list, default=(1, 2, 4, 8),
                 metavar="B,B,...",
                 help="serving_default batch sizes replayed at load, so XLA compiles them "
                      "before the version serves (default 1,2,4,8; for the GPU batching "
                      "config 1,2,4,8,16,32): every size the server's batching pads to")
  p.add_argument("-v", "--verbose", action="store_true", help=quiet.VERBOSE_HELP)
  args = p.parse_args(argv)
  if args.image_size is not None and args.image_size < 1:
    p.error("--image-size must be positive")
  if args.version is not None and args.version < 0:
    p.error("--version must not be negative")
  problem = _argument_problem(args)
  if problem:
    p.error(problem)
  return args


def batch_size_list(text: str) -> tuple[int, ...]:
  """"1,2,4,8" -> (1, 2, 4, 8): positive, distinct, sorted."""
  try:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
  if not sizes or sizes[0] < 1:
    raise argparse.ArgumentTypeError(f"batch sizes must be positive: {text!r}")
  return tuple(sizes)


def _argument_problem(args: argparse.Namespace) -> str | None:
  """What is wrong with the arguments, found before TensorFlow is imported
  and anything is downloaded or written; None when nothing."""
  from export import configs, zoo

  name = args.name
  if not name or name.startswith(".") or os.sep in name or name != name.strip():
    return f"--name: bad model name {name!r}"
  if args.kind == "features" and args.labels is not None:
    return "--labels applies to classifiers only, not to --kind features"
  if args.labels is not None and not os.path.isfile(args.labels):
    return f"--labels: {args.labels}: no such file"
  try:
    resolved = zoo.resolve(args.checkpoint)
  except (OSError, ValueError) as e:  # no such file, unknown or malformed name
    return f"--checkpoint: {e}"
  spec = args.config or args.model
  if spec is None and resolved.config is None:
    return (f"--config or --model is needed: the name {args.checkpoint!r} does not say "
            f"which model it is")
  if spec:
    flag = "--config" if args.config else "--model"
    try:
      configs.get_config(spec)
    except KeyError as e:
      return f"{flag}: {e.args[0]}"
    except (OSError, ValueError) as e:  # no such file, not JSON
      return f"{flag}: {e}"
  return None


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  quiet.import_tensorflow(args.verbose)
  from export import exporter, repository  # heavy: TF + JAX
  try:
    with steplog.on_stderr():
      path = exporter.export_checkpoint(
          args.checkpoint, args.name, args.repo, config=args.config or args.model,
          image_size=args.image_size, kind=args.kind, labels=args.labels,
          version=args.version, warmup_batch_sizes=args.warmup_batch_sizes,
          model_config_file=args.model_config or exporter.DEFAULT_MODEL_CONFIG)
  except repository.NotRegisteredError as e:
    print(f"export: error: {e}", file=sys.stderr)
    print(e.target)
    return 3
  except (RuntimeError, ValueError, KeyError, OSError) as e:
    # ExportError, PublishError, DownloadError (RuntimeError); CheckpointError
    # (ValueError); unknown model names (KeyError); file errors (OSError).
    print(f"export: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("export: interrupted; nothing was published", file=sys.stderr)
    return 130
  print(path)
  return 0


def run() -> int:
  """The `vit-export` console script: `python -m export` with this process's arguments."""
  return main(sys.argv[1:])


if __name__ == "__main__":
  sys.exit(run())
