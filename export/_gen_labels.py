"""Writes export/data/imagenet21k_labels.txt from timm's package data.

The 21843 classes of ImageNet-21k checkpoints (Google's "imagenet21k" as used
by BiT and ViT) are WordNet synsets in a fixed order; timm ships that order
(`timm/data/_info/imagenet21k_goog_synsets.txt`, one synset id a line) and
each synset's lemmas (`imagenet_synset_to_lemma.txt`, "id<TAB>lemmas"). The
labels file is the lemmas in synset order, one class a line, the format of
the shipped ImageNet-1k names ("tench, Tinca tinca").

Only timm's wheel is downloaded (`pip download --no-deps`, pinned below) and
read as a zip: timm, torch and friends are not installed.

    python -m export._gen_labels                 # download the wheel, rewrite the file
    python -m export._gen_labels --wheel W.whl   # from a wheel already here
    python -m export._gen_labels --check         # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TIMM_VERSION = "1.0.31"
"""The timm release whose package data the shipped file was made from."""

OUTPUT = Path(__file__).resolve().parent / "data" / "imagenet21k_labels.txt"
_SYNSETS = "timm/data/_info/imagenet21k_goog_synsets.txt"
_LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
NUM_CLASSES = 21843


def labels_from_wheel(wheel: str | Path) -> str:
  """The labels file's text, from a timm wheel."""
  with zipfile.ZipFile(wheel) as z:
    synsets = z.read(_SYNSETS).decode("utf-8").split()
    lemmas = dict(csv.reader(z.read(_LEMMAS).decode("utf-8").splitlines(), delimiter="\t"))
  if len(synsets) != NUM_CLASSES:
    raise ValueError(f"{wheel}: {_SYNSETS} has {len(synsets)} synsets, not {NUM_CLASSES}")
  missing = [s for s in synsets if s not in lemmas]
  if missing:
    raise ValueError(f"{wheel}: no lemmas for {len(missing)} synsets, e.g. {missing[:3]}")
  return "".join(f"{lemmas[s]}\n" for s in synsets)


def download_wheel(directory: Path) -> Path:
  """timm's wheel, pinned, without its dependencies, from the package index."""
  subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                  "--only-binary=:all:", f"timm=={TIMM_VERSION}", "-d", str(directory)],
                 check=True)
  (wheel,) = directory.glob("timm-*.whl")
  return wheel


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m export._gen_labels",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--wheel", help=f"a timm wheel (default: download timm=={TIMM_VERSION})")
  parser.add_argument("--check", action="store_true",
                      help="compare with the shipped file instead of writing it")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    text = labels_from_wheel(args.wheel or download_wheel(Path(tmp)))
  if args.check:
    if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
      print(f"{OUTPUT} is out of date; run python -m export._gen_labels", file=sys.stderr)
      return 1
    print(f"{OUTPUT} is up to date")
    return 0
  OUTPUT.write_text(text, encoding="utf-8")
  print(f"wrote {OUTPUT} ({NUM_CLASSES} classes, {len(text.encode())} bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
