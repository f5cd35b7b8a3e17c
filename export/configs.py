"""Model configurations: typed and frozen, with the original field names.

A config is read once, at the edge (`get_config`: a registered name, a JSON
file or a dict), into a `ViTConfig`; everything downstream (`build_model`,
`total_stride`, `native_image_size`, `load_checkpoint`, the exporter, the
digits trainer) takes that object and never re-normalizes. Field names are
exactly the original `vit_jax/configs/models.py` ConfigDict's, so a JSON file
written from one of those (or by hand) loads as it is:

    {"hidden_size": 768, "patches": {"size": [16, 16]},
     "transformer": {"mlp_dim": 3072, "num_heads": 12, "num_layers": 12},
     "resnet": null, "classifier": "token", "representation_size": null,
     "num_classes": 1000}

`num_classes` may be left out: it is then read from the checkpoint's head.
The objects also read like those dicts (`cfg["transformer"]["num_layers"]`,
`cfg.get("num_classes")`), `cfg | {"num_classes": 10}` is a validated copy
with fields replaced, and `to_dict()` gives the JSON shape back.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
from typing import Any, ClassVar, Iterator, Mapping


class _Fields(collections.abc.Mapping):
  """A frozen dataclass that reads like the original ConfigDict: mapping
  access to its fields, `|` for a validated copy, `to_dict` for JSON."""

  _WHERE: ClassVar[str] = ""   # the field path prefix, for error messages
  _IGNORED: ClassVar[frozenset[str]] = frozenset()  # accepted, not kept

  def __getitem__(self, key: str) -> Any:
    if key not in self._names():
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self) -> Iterator[str]:
    return iter(self._names())

  def __len__(self) -> int:
    return len(self._names())

  def __or__(self, changes: Mapping[str, Any]) -> Any:
    return type(self).from_dict({**self.to_dict(), **changes})

  @classmethod
  def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  def to_dict(self) -> dict[str, Any]:
    """The JSON shape (nested dicts and lists), as the original ConfigDicts."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Any:
    """From the original field names (JSON lists or ml_collections tuples).
    Unknown fields are an error, so a misspelt one is not silently ignored."""
    unknown = sorted(set(data) - set(cls._names()) - cls._IGNORED)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in data]
    if unknown or missing:
      raise ValueError("config " + "; ".join(
          f"{what} field(s): {', '.join(cls._WHERE + k for k in keys)}"
          for what, keys in (("is missing required", missing), ("has unknown", unknown))
          if keys))
    return cls(**cls._convert({k: v for k, v in data.items() if k not in cls._IGNORED}))

  @classmethod
  def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
    """The fields' values in their typed form (nested objects, tuples)."""
    return data


@dataclasses.dataclass(frozen=True)
class Patches(_Fields):
  _WHERE: ClassVar[str] = "patches."
  size: tuple[int, int]

  @classmethod
  def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
    return {"size": tuple(int(n) for n in data["size"])}


@dataclasses.dataclass(frozen=True)
class Transformer(_Fields):
  _WHERE: ClassVar[str] = "transformer."
  # Dropout only matters in training, and the JAX graph is never trained
  # (fine-tuning happens on the exported TF variables): read, not kept.
  _IGNORED: ClassVar[frozenset[str]] = frozenset({"attention_dropout_rate", "dropout_rate"})
  mlp_dim: int
  num_heads: int
  num_layers: int


@dataclasses.dataclass(frozen=True)
class ResNet(_Fields):
  _WHERE: ClassVar[str] = "resnet."
  num_layers: tuple[int, ...]
  width_factor: int = 1

  @classmethod
  def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "num_layers": tuple(int(n) for n in data["num_layers"])}


@dataclasses.dataclass(frozen=True)
class ViTConfig(_Fields):
  """A ViT or ResNet+ViT hybrid, as the original `vit_jax` configs describe it.

  Not named ModelConfig: that is TF Serving's models.config entry
  (`tensorflow_serving.config.ModelConfig`), which the exporter writes too."""
  hidden_size: int
  patches: Patches
  transformer: Transformer
  resnet: ResNet | None = None
  classifier: str = "token"
  representation_size: int | None = None
  num_classes: int | None = None
  model_name: str | None = None

  def __post_init__(self) -> None:
    if self.classifier not in ("token", "gap"):
      raise ValueError(f"classifier must be 'token' or 'gap', got {self.classifier!r}")

  @classmethod
  def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
    resnet = data.get("resnet")
    return {**data, "patches": Patches.from_dict(data["patches"]),
            "transformer": Transformer.from_dict(data["transformer"]),
            "resnet": None if resnet is None else ResNet.from_dict(resnet)}

  @property
  def total_stride(self) -> int:
    """Pixels per token side: patch size times the ResNet stem/stages stride."""
    stride = self.patches.size[0]
    if self.resnet is not None:
      stride *= 4 * 2 ** max(len(self.resnet.num_layers) - 1, 0)
    return stride


def _vit(hidden: int, mlp: int, heads: int, layers: int, patch: int) -> dict[str, Any]:
  return {
      "patches": {"size": (patch, patch)},
      "hidden_size": hidden,
      "transformer": {
          "mlp_dim": mlp,
          "num_heads": heads,
          "num_layers": layers,
      },
      "resnet": None,
      "classifier": "token",
      "representation_size": None,
  }


def _hybrid(base: dict[str, Any], num_layers: tuple[int, ...], patch: int
            ) -> dict[str, Any]:
  return {**base, "patches": {"size": (patch, patch)},
          "resnet": {"num_layers": num_layers, "width_factor": 1}}


_TI = (192, 768, 3, 12)
_S = (384, 1536, 6, 12)
_B = (768, 3072, 12, 12)
_L = (1024, 4096, 16, 24)
_H = (1280, 5120, 16, 32)

# Keys are the short names used throughout the bundle; `model_name` is the
# original's (file names in gs://vit_models/ use it).
_SPECS: dict[str, dict[str, Any]] = {
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
MODELS: dict[str, ViTConfig] = {
    name: ViTConfig.from_dict({**spec, "model_name": (
        "ViT-" + name if "+" not in name else name.replace("+", "+ViT-")).replace("/", "_")})
    for name, spec in _SPECS.items()}


def get_config(spec: str | os.PathLike | Mapping[str, Any]) -> ViTConfig:
  """The config from a registered name (`B/16`, `R50+L/32`, also `ViT-B_16`,
  `R50+ViT-L_32`, `B_16`, `R50_L_32`), a JSON file path, or a mapping with the
  original field names (a ViTConfig is returned as it is)."""
  if isinstance(spec, ViTConfig):
    return spec
  if isinstance(spec, Mapping):
    return ViTConfig.from_dict(spec)
  spec = os.fspath(spec)
  if spec.endswith(".json") or os.path.isfile(spec):
    with open(spec) as f:
      return ViTConfig.from_dict(json.load(f))
  name = canonical_name(spec)
  if name is None:
    raise KeyError(f"unknown model {spec!r}; known: {', '.join(MODELS)}")
  return MODELS[name]


def canonical_name(name: str) -> str | None:
  """Maps the original spellings (`ViT-B_16`, `R50+ViT-L_32`, augreg `R50_L_32`,
  `R_Ti_16`) to the registry key, or None when unknown."""
  if name in MODELS:
    return name
  n = name.replace("ViT-", "")
  for key, cfg in MODELS.items():
    aliases = {key.replace("/", "_"), key.replace("/", "_").replace("+", "_"),
               cfg.model_name}
    if n in aliases or name in aliases:
      return key
  return None
