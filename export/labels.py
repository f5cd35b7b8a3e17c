"""Class names for a classifier's `assets/labels.txt`.

A checkpoint's head says how many classes it has, not what they are; the
label set implied by its name (`export.zoo.resolve(...).label_set`) does. The
bundle ships the ImageNet-1k names as package data
(export/data/imagenet2012_labels.txt: the 1000 ILSVRC-2012 synset
descriptions in the standard class order, e.g. line 0 "tench, Tinca tinca",
281 "tabby, tabby cat").

ImageNet-21k (the 21843 classes of i21k pre-trained checkpoints, Google's
order as used by BiT and ViT) ships too: export/data/imagenet21k_labels.txt,
each class's WordNet lemmas (line 0 "organism, being"), generated from the
public package data of timm (`python -m export._gen_labels`, which says
how). Other label sets (cifar100, oxford_iiit_pet, ...) get numbered names
("class_0", ...); pass the real ones with `python -m export ... --labels FILE`.
"""

from __future__ import annotations

from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"
SHIPPED = {"imagenet2012": _DATA / "imagenet2012_labels.txt",
           "imagenet21k": _DATA / "imagenet21k_labels.txt"}


def default_labels(num_classes: int, label_set: str | None = None) -> list[str]:
  """Names for `num_classes` classes: the shipped names of `label_set`, else
  numbered ("class_0", ...).

  Raises:
    ValueError: `label_set` has shipped names but not `num_classes` of them
      (the checkpoint is not what its name says).
  """
  path = SHIPPED.get(label_set or "")
  if path is None:
    return [f"class_{i}" for i in range(num_classes)]
  names = path.read_text(encoding="utf-8").splitlines()
  if len(names) != num_classes:
    raise ValueError(f"label set {label_set!r} has {len(names)} classes but the "
                     f"checkpoint has {num_classes}; pass --labels")
  return names
