"""Named checkpoints: resolving a model or augreg name to a source and config.

Placeholder until the model-zoo work lands: every source resolves to itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ResolvedCheckpoint:
  """What a --checkpoint value stands for."""
  source: str                             # local path, http(s):// or gs:// URL
  config: dict[str, Any] | None = None    # implied by the name, original field names
  image_size: int | None = None           # serving resolution implied by the name
  label_set: str | None = None            # e.g. "imagenet2012", for the labels


def resolve(src: str) -> ResolvedCheckpoint:
  return ResolvedCheckpoint(source=src)
