"""Original ViT checkpoints -> Flax models -> verified jax2tf SavedModels.

The only package of the bundle that imports JAX/Flax.
"""

from export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export.configs import MODELS, get_config
from export.models import VisionTransformer, build_model

__all__ = ["CheckpointError", "MODELS", "VisionTransformer", "build_model",
           "get_config", "load_checkpoint", "save_checkpoint"]
