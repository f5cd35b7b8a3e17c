"""Models the benchmarks serve besides the default one: real ViT
architectures with seeded random weights, exported once by
`export.exporter.export_checkpoint` and cached (delete the cache directory
to re-export). Their speed is the architecture's, not the weights'."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import export


def export_random(name: str, cfg: export.ViTConfig, size: int,
                  warmup_batch_sizes: tuple[int, ...], cache: Path) -> Path:
  """<cache>/<name> holding version 1 of `cfg` at `size` px with seeded
  random weights, warming `warmup_batch_sizes`; exported only when absent."""
  base = cache / name
  if (base / "1" / "saved_model.pb").exists():
    return base
  import jax
  import jax.numpy as jnp

  import export
  from export.exporter import export_checkpoint
  model = export.build_model(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, size, size, 3)), train=False))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (rng.normal(size=s.shape) * 0.02).astype(np.float32), shapes["params"])
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    checkpoint = Path(tmp) / f"{name}_random.npz"
    export.save_checkpoint(params, checkpoint)
    export_checkpoint(str(checkpoint), name, cache, config=cfg, image_size=size,
                      model_config_file=None, warmup_batch_sizes=warmup_batch_sizes, version=1)
  return base
