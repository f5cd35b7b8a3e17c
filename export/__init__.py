"""Original ViT checkpoints -> Flax models -> verified jax2tf SavedModels.

The only package of the bundle that imports JAX/Flax.
"""

from typing import Any

from export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export.configs import MODELS, get_config
from export.models import VisionTransformer, build_model

__all__ = ["CheckpointError", "MODELS", "VisionTransformer", "build_model",
           "export_checkpoint", "get_config", "load_checkpoint", "save_checkpoint"]


def __getattr__(name: str) -> Any:
  # Imported on first use: the exporter pulls in TensorFlow, which `import
  # export` for loading checkpoints or building models should not pay for.
  if name == "export_checkpoint":
    from export.exporter import export_checkpoint
    return export_checkpoint
  raise AttributeError(f"module 'export' has no attribute {name!r}")
