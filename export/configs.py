"""Model configurations with the original `ml_collections` field names.

A config is a plain nested dict, shaped exactly like the original
`vit_jax/configs/models.py` ConfigDicts, so a JSON file written from one of
those (or by hand) is accepted as it is:

    {"hidden_size": 768, "patches": {"size": [16, 16]},
     "transformer": {"mlp_dim": 3072, "num_heads": 12, "num_layers": 12},
     "resnet": null, "classifier": "token", "representation_size": null,
     "num_classes": 1000}

`num_classes` may be left out: it is then read from the checkpoint's head.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

Config = dict[str, Any]


def _vit(hidden: int, mlp: int, heads: int, layers: int, patch: int) -> Config:
  return {
      "patches": {"size": (patch, patch)},
      "hidden_size": hidden,
      "transformer": {
          "mlp_dim": mlp,
          "num_heads": heads,
          "num_layers": layers,
          "attention_dropout_rate": 0.0,
          "dropout_rate": 0.0,
      },
      "resnet": None,
      "classifier": "token",
      "representation_size": None,
  }


def _hybrid(base: Config, num_layers: tuple[int, ...], patch: int) -> Config:
  cfg = copy.deepcopy(base)
  cfg["patches"] = {"size": (patch, patch)}
  cfg["resnet"] = {"num_layers": num_layers, "width_factor": 1}
  return cfg


_TI = (192, 768, 3, 12)
_S = (384, 1536, 6, 12)
_B = (768, 3072, 12, 12)
_L = (1024, 4096, 16, 24)
_H = (1280, 5120, 16, 32)

# Keys are the short names used throughout the bundle; `model_name` is the
# original's (file names in gs://vit_models/ use it).
MODELS: dict[str, Config] = {
    "Ti/16": _vit(*_TI, 16),
    "S/32": _vit(*_S, 32),
    "S/16": _vit(*_S, 16),
    "S/8": _vit(*_S, 8),
    "B/32": _vit(*_B, 32),
    "B/16": _vit(*_B, 16),
    "B/8": _vit(*_B, 8),
    "L/32": _vit(*_L, 32),
    "L/16": _vit(*_L, 16),
    "H/14": _vit(*_H, 14),
    # The original comment says the stem "downscales 2x"; it actually has
    # stride 4 (conv /2 + max-pool /2), so with 8x8 patches the grid is /32.
    # We keep the original numbers so its checkpoints load unchanged.
    "R+Ti/16": _hybrid(_vit(*_TI, 16), (), 8),
    "R26+S/32": _hybrid(_vit(*_S, 32), (2, 2, 2, 2), 1),
    "R26+B/32": _hybrid(_vit(*_B, 32), (2, 2, 2, 2), 1),
    "R50+B/16": _hybrid(_vit(*_B, 16), (3, 4, 9), 1),
    "R50+L/32": _hybrid(_vit(*_L, 32), (3, 4, 6, 3), 1),
}
for _name, _cfg in MODELS.items():
  _cfg["model_name"] = ("ViT-" + _name if "+" not in _name else
                        _name.replace("+", "+ViT-")).replace("/", "_")


def normalize(cfg: Config) -> Config:
  """Returns a deep copy with defaults filled in and sequences as tuples.

  Accepts what JSON gives (lists) and what ml_collections gives (tuples).
  """
  cfg = copy.deepcopy(dict(cfg))
  missing = [k for k in ("hidden_size", "patches", "transformer") if k not in cfg]
  if missing:
    raise ValueError(f"config is missing required field(s): {', '.join(missing)}")
  cfg["patches"] = {"size": tuple(cfg["patches"]["size"])}
  tr = dict(cfg["transformer"])
  for k in ("mlp_dim", "num_heads", "num_layers"):
    if k not in tr:
      raise ValueError(f"config is missing required field transformer.{k}")
  tr.setdefault("attention_dropout_rate", 0.0)
  tr.setdefault("dropout_rate", 0.0)
  cfg["transformer"] = tr
  if cfg.get("resnet") is not None:
    cfg["resnet"] = {"num_layers": tuple(cfg["resnet"]["num_layers"]),
                     "width_factor": cfg["resnet"].get("width_factor", 1)}
  else:
    cfg["resnet"] = None
  cfg.setdefault("classifier", "token")
  if cfg["classifier"] not in ("token", "gap"):
    raise ValueError(f"classifier must be 'token' or 'gap', got {cfg['classifier']!r}")
  cfg.setdefault("representation_size", None)
  return cfg


def get_config(spec: str | os.PathLike | Config) -> Config:
  """A config from a registered name (`B/16`, `R50+L/32`, also `ViT-B_16`,
  `R50+ViT-L_32`, `B_16`, `R50_L_32`), a JSON file path, or a dict."""
  if isinstance(spec, dict):
    return normalize(spec)
  spec = os.fspath(spec)
  if spec.endswith(".json") or os.path.isfile(spec):
    with open(spec) as f:
      return normalize(json.load(f))
  name = canonical_name(spec)
  if name is None:
    raise KeyError(f"unknown model {spec!r}; known: {', '.join(MODELS)}")
  return normalize(MODELS[name])


def canonical_name(name: str) -> str | None:
  """Maps the original spellings (`ViT-B_16`, `R50+ViT-L_32`, augreg `R50_L_32`,
  `R_Ti_16`) to the registry key, or None when unknown."""
  if name in MODELS:
    return name
  n = name.replace("ViT-", "")
  for key, cfg in MODELS.items():
    aliases = {key.replace("/", "_"), key.replace("/", "_").replace("+", "_"),
               cfg["model_name"]}
    if n in aliases or name in aliases:
      return key
  return None
