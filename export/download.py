"""Resolving a checkpoint source to a local file.

Placeholder until the model-zoo work lands: only local paths are accepted.
"""

from __future__ import annotations

import os
from pathlib import Path


def fetch(src: str) -> Path:
  """A local path for `src`."""
  if os.path.exists(src):
    return Path(src)
  raise FileNotFoundError(f"{src}: no such file")
