"""Original ViT checkpoints -> Flax models -> verified jax2tf SavedModels.

The only package of the bundle that imports JAX/Flax.
"""

import importlib
from typing import Any

# The public API, imported on first use: `import export` (and so every
# `python -m export...` command line, before it has parsed its arguments)
# must not pay for JAX or TensorFlow.
_API = {"CheckpointError": "export.checkpoint", "load_checkpoint": "export.checkpoint",
        "save_checkpoint": "export.checkpoint", "MODELS": "export.configs",
        "ViTConfig": "export.configs", "get_config": "export.configs",
        "VisionTransformer": "export.models", "build_model": "export.models",
        "export_checkpoint": "export.exporter"}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
  if name not in _API:
    raise AttributeError(f"module 'export' has no attribute {name!r}")
  return getattr(importlib.import_module(_API[name]), name)
