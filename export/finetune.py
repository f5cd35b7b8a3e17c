"""`python -m export.finetune`: fine-tunes an exported feature extractor on an
image folder and publishes the result as a new classifier version
(export/finetuning.py does the work).

  python -m export.finetune --features-model DIR --images DIR --repo models
                            --name NAME [--epochs N] [--train-backbone]
                            [--learning-rate LR] [--backbone-learning-rate LR]
                            [--batch-size B]
                            [--validation-fraction F] [--seed S]
                            [--model-config FILE] [--checkpoint-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from export import quiet, steplog


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The fine-tuning settings (the command line's defaults)."""
  epochs: int = 10
  batch_size: int = 32
  learning_rate: float = 1e-2            # Adam, for the new head
  backbone_learning_rate: float = 1e-4   # Adam, for the backbone (--train-backbone)
  train_backbone: bool = False
  validation_fraction: float = 0.2
  seed: int = 0


def parse_args(argv: list[str]) -> argparse.Namespace:
  """Needs nothing heavy, so `--help` answers before TensorFlow is imported."""
  p = argparse.ArgumentParser(
      prog="python -m export.finetune",
      description="Fine-tune an exported feature extractor on an image folder "
                  "(one subfolder per class) and publish it as a new classifier version.")
  p.add_argument("--features-model", required=True, metavar="DIR",
                 help="a version directory exported with --kind features")
  p.add_argument("--images", required=True, metavar="DIR", help="DIR/<class>/<image>")
  p.add_argument("--repo", required=True, metavar="DIR", help="model repository")
  p.add_argument("--name", required=True, help="model name to publish under")
  p.add_argument("--epochs", type=int, default=Recipe.epochs)
  p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
  p.add_argument("--learning-rate", type=float, default=Recipe.learning_rate,
                 help="Adam learning rate of the new head")
  p.add_argument("--backbone-learning-rate", type=float,
                 default=Recipe.backbone_learning_rate,
                 help="Adam learning rate of the backbone, with --train-backbone")
  p.add_argument("--train-backbone", action="store_true",
                 help="also update the backbone's weights (default: head only)")
  p.add_argument("--validation-fraction", type=float, default=Recipe.validation_fraction)
  p.add_argument("--seed", type=int, default=Recipe.seed)
  p.add_argument("--model-config", metavar="FILE",
                 help="models.config to add the model to (default: models.config in "
                      "the parent directory of --repo)")
  p.add_argument("--checkpoint-dir", metavar="DIR",
                 help="where the fine-tuned checkpoint is kept (default .cache/finetune)")
  p.add_argument("-v", "--verbose", action="store_true", help=quiet.VERBOSE_HELP)
  return p.parse_args(argv)


def main(argv: list[str]) -> int:
  """The command line: parses the arguments before TensorFlow is imported."""
  args = parse_args(argv)
  quiet.import_tensorflow(args.verbose)
  return run(args)


def run(args: argparse.Namespace) -> int:
  """The command line's work, for arguments already parsed."""
  from export import CheckpointError, exporter, finetuning, repository

  def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

  recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size,
                  learning_rate=args.learning_rate,
                  backbone_learning_rate=args.backbone_learning_rate,
                  train_backbone=args.train_backbone,
                  validation_fraction=args.validation_fraction, seed=args.seed)
  try:
    with steplog.on_stderr():
      result = finetuning.fine_tune(
          args.features_model, args.images, args.repo, args.name, recipe,
          model_config_file=args.model_config or exporter.DEFAULT_MODEL_CONFIG,
          checkpoint_dir=args.checkpoint_dir, log=log)
  except (finetuning.FineTuneError, CheckpointError, exporter.ExportError,
          repository.PublishError, OSError) as e:
    log(f"error: {e}")
    return 1
  except KeyboardInterrupt:
    log("interrupted; no partial version was published")
    return 130
  print(result.version_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
