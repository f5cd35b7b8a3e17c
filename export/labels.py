"""Class names for a classifier's `assets/labels.txt`.

Placeholder until the model-zoo work lands (ImageNet names as package data).
"""

from __future__ import annotations


def default_labels(num_classes: int, label_set: str | None = None) -> list[str]:
  """Names for `num_classes` classes; numbered when no names are known."""
  del label_set
  return [f"class_{i}" for i in range(num_classes)]
