"""Reading and writing checkpoints in the published vit_jax `.npz` format.

The published files are flat `np.savez` archives keyed by `/`-joined parameter
paths, with pre-Linen block names (`LayerNorm_0, MultiHeadDotProductAttention_1,
LayerNorm_2, MlpBlock_3`) and GroupNorm arrays shaped (1,1,1,C). Loading
renames and squeezes them, resizes the position embedding for the serving
resolution exactly as the original `load_pretrained` does, and checks every
key and shape against the model: nothing is skipped or zeroed silently.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from export import download, zoo
from export.configs import ViTConfig
from export.models import build_model

Params = dict[str, Any]
_NUMBERED = re.compile(r"^(.*)_(\d+)$")


class CheckpointError(ValueError):
  """The checkpoint cannot be read, or does not fit the config."""


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The flat key -> array mapping of an `.npz` file, with clear errors."""
  path = os.fspath(path)
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise CheckpointError(f"{path}: not an .npz checkpoint (a single .npy array)")
    with data:
      return {k: data[k] for k in data.files}
  except CheckpointError:
    raise
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no such file") from None
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise CheckpointError(
        f"{path}: not a readable .npz checkpoint (truncated or corrupt download?): {e}"
    ) from None


def _renumber(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Renumbers `Type_N` children per type to 0..n-1 in index order, at every
  level: the pre-Linen -> Linen conversion of flax's `convert_pre_linen`.
  Idempotent on Linen names."""
  out: dict[str, Any] = {}
  groups: dict[str, list[tuple[int, str]]] = {}
  for name in tree:
    m = _NUMBERED.match(name)
    if m:
      groups.setdefault(m.group(1), []).append((int(m.group(2)), name))
    else:
      out[name] = tree[name]
  for prefix, members in groups.items():
    for new_index, (_, name) in enumerate(sorted(members)):
      out[f"{prefix}_{new_index}"] = tree[name]
  return {k: _renumber(v) if isinstance(v, Mapping) else v for k, v in out.items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> Params:
  tree: Params = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      flat.update(flatten(v, key + "/"))
    else:
      flat[key] = v
  return flat


def interpolate_posembed(posemb: np.ndarray, num_tokens: int, has_class_token: bool) -> np.ndarray:
  """Resizes a (1, tokens, D) position embedding to `num_tokens`, as the
  original `checkpoint.interpolate_posembed`: the class-token row is kept, the
  square grid is zoomed linearly with corners aligned (scipy, order=1)."""
  if has_class_token:
    tok, grid = posemb[:, :1], posemb[0, 1:]
    num_tokens -= 1
  else:
    tok, grid = posemb[:, :0], posemb[0]
  gs_old, gs_new = int(np.sqrt(len(grid))), int(np.sqrt(num_tokens))
  if gs_old**2 != len(grid) or gs_new**2 != num_tokens:
    raise CheckpointError(
        f"position embedding grid is not square ({len(grid)} -> {num_tokens} tokens)")
  grid = grid.reshape(gs_old, gs_old, -1)
  grid = scipy.ndimage.zoom(grid, (gs_new / gs_old, gs_new / gs_old, 1), order=1)
  return np.concatenate([tok, grid.reshape(1, gs_new * gs_new, -1)], axis=1)


def native_image_size(flat: Mapping[str, np.ndarray], cfg: ViTConfig) -> int:
  """The image size a checkpoint was trained at, from its position embedding."""
  tokens = flat["Transformer/posembed_input/pos_embedding"].shape[1]
  grid = tokens - (1 if cfg.classifier == "token" else 0)
  return int(round(np.sqrt(grid))) * cfg.total_stride


def expected_shapes(cfg: ViTConfig, image_size: int, *, features_only: bool = False
                    ) -> dict[str, tuple[int, ...]]:
  """Flat key -> shape of the model's parameters (via `jax.eval_shape`)."""
  model = build_model(cfg, features_only=features_only)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  return {k: tuple(v.shape) for k, v in flatten(variables["params"]).items()}


def _is_groupnorm(key: str) -> bool:
  parts = key.split("/")
  return len(parts) > 1 and parts[-2].startswith("gn")


def load_checkpoint(src: str | os.PathLike, cfg: ViTConfig, image_size: int | None = None,
                    *, features_only: bool = False) -> Params:
  """Parameters for `build_model(cfg)` from a checkpoint.

  Args:
    src: a local `.npz`, an http(s):// or gs:// URL, or an augreg name
      (see `download.fetch`).
    cfg: the model config; `num_classes` may be absent (read from the head).
    image_size: the serving resolution; None keeps the checkpoint's own. The
      position embedding is resized when it differs.
    features_only: drop the `head/*` arrays, for a feature extractor built with
      `build_model(cfg, features_only=True)`.

  Raises:
    CheckpointError: unreadable file, or keys/shapes that do not fit `cfg`
      (every missing, unexpected and mis-shaped key is named).
  """
  flat = read_npz(download.fetch(zoo.resolve(os.fspath(src)).source))
  flat = flatten(_renumber(unflatten(flat)))
  if features_only:
    flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
  elif cfg.num_classes is None and "head/bias" in flat:
    cfg = cfg | {"num_classes": int(flat["head/bias"].shape[-1])}
  if "Transformer/posembed_input/pos_embedding" not in flat:
    raise CheckpointError(f"{src}: no Transformer/posembed_input/pos_embedding; "
                          f"is this a ViT checkpoint? keys: {sorted(flat)[:8]} ...")
  if image_size is None:
    image_size = native_image_size(flat, cfg)
  expected = expected_shapes(cfg, image_size, features_only=features_only)

  for key, shape in expected.items():
    value = flat.get(key)
    if value is None:
      continue
    if _is_groupnorm(key) and value.shape == (1, 1, 1, *shape):
      flat[key] = value.reshape(shape)  # GroupNorm arrays are stored as (1,1,1,C)
    elif key == "Transformer/posembed_input/pos_embedding" and value.shape != shape \
        and value.shape[2] == shape[2]:
      flat[key] = interpolate_posembed(value, shape[1], cfg.classifier == "token")

  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  misshaped = sorted(k for k in set(expected) & set(flat) if flat[k].shape != expected[k])
  if missing or unexpected or misshaped:
    lines = [f"checkpoint {src} does not fit the config "
             f"({cfg.model_name or 'custom'}, image size {image_size}):"]
    lines += [f"  missing: {k} {expected[k]}" for k in missing]
    lines += [f"  unexpected: {k} {flat[k].shape}" for k in unexpected]
    lines += [f"  mis-shaped: {k}: checkpoint {flat[k].shape}, model {expected[k]}"
              for k in misshaped]
    raise CheckpointError("\n".join(lines))
  return unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})


_PRE_LINEN_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0":
                    "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
                    "MlpBlock_0": "MlpBlock_3"}


def save_checkpoint(params: Params, path: str | os.PathLike) -> None:
  """Writes `params` in the published format (pre-Linen block names, GroupNorm
  arrays as (1,1,1,C), sorted keys), so it loads like a released checkpoint.
  Written to a temporary name and renamed, so a reader never sees half a file."""
  flat = {}
  for key, value in flatten(params).items():
    parts = key.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = _PRE_LINEN_BLOCK[parts[2]]
    value = np.asarray(value, np.float32)
    if _is_groupnorm(key):
      value = value.reshape(1, 1, 1, -1)
    flat["/".join(parts)] = value
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **dict(sorted(flat.items())))
  os.replace(tmp, path)
