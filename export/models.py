"""The Vision Transformer and ResNet+ViT hybrid, as in the original vit_jax.

Module and parameter names are the original Linen ones, so a checkpoint maps
1:1 (the published files use pre-Linen block names; `checkpoint.py` renames
them). Inference only: dropout is kept out, since serving never trains the
JAX graph (fine-tuning happens on the exported TF variables).

Intermediate values are sown into the `intermediates` collection
(`resnet_features`, `encoded`, `pre_logits`) for tests and feature export.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from export.configs import ViTConfig


def weight_standardize(w: jnp.ndarray, axis: Sequence[int], eps: float) -> jnp.ndarray:
  """(w - mean) / (std + eps) with population std, as the original StdConv."""
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
  """Convolution with weight standardization applied on every forward pass."""

  def param(self, name: str, *args: Any, **kwargs: Any) -> Any:
    param = super().param(name, *args, **kwargs)
    if name == "kernel":
      param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
    return param


class ResidualUnit(nn.Module):
  """Bottleneck ResNet v1.5 unit with StdConv + GroupNorm (BiT style)."""
  features: int
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    needs_projection = x.shape[-1] != self.features * 4 or self.strides != (1, 1)
    residual = x
    if needs_projection:
      residual = StdConv(self.features * 4, (1, 1), self.strides, use_bias=False,
                         name="conv_proj")(residual)
      residual = nn.GroupNorm(name="gn_proj")(residual)
    y = StdConv(self.features, (1, 1), use_bias=False, name="conv1")(x)
    y = nn.relu(nn.GroupNorm(name="gn1")(y))
    y = StdConv(self.features, (3, 3), self.strides, use_bias=False, name="conv2")(y)
    y = nn.relu(nn.GroupNorm(name="gn2")(y))
    y = StdConv(self.features * 4, (1, 1), use_bias=False, name="conv3")(y)
    y = nn.GroupNorm(name="gn3", scale_init=nn.initializers.zeros)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  block_size: int
  nout: int
  first_stride: tuple[int, int]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = ResidualUnit(self.nout, strides=self.first_stride, name="unit1")(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.nout, strides=(1, 1), name=f"unit{i + 1}")(x)
    return x


class AddPositionEmbs(nn.Module):
  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    shape = (1, inputs.shape[1], inputs.shape[2])
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape)
    return inputs + pe


class MlpBlock(nn.Module):
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out_dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6))(x)
    x = nn.gelu(x)  # tanh approximation, as flax's default and the original
    return nn.Dense(out_dim, kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.normal(stddev=1e-6))(x)


class Encoder1DBlock(nn.Module):
  mlp_dim: int
  num_heads: int

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    x = nn.LayerNorm()(inputs)
    x = nn.MultiHeadDotProductAttention(num_heads=self.num_heads,
                                        kernel_init=nn.initializers.xavier_uniform())(x, x)
    x = x + inputs
    y = nn.LayerNorm()(x)
    return x + MlpBlock(mlp_dim=self.mlp_dim)(y)


class Encoder(nn.Module):
  num_layers: int
  mlp_dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = AddPositionEmbs(name="posembed_input")(x)
    for i in range(self.num_layers):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, name=f"encoderblock_{i}")(x)
    return nn.LayerNorm(name="encoder_norm")(x)


class VisionTransformer(nn.Module):
  """ViT, optionally with a ResNet stem (hybrid).

  `num_classes`: the head size; 0 builds a feature extractor (no head, returns
  the `pre_logits` vector); None takes the head size from the parameters.
  """
  patch_size: tuple[int, int]
  hidden_size: int
  num_layers: int
  mlp_dim: int
  num_heads: int
  resnet_layers: tuple[int, ...] | None = None
  resnet_width: float = 1
  classifier: str = "token"
  representation_size: int | None = None
  num_classes: int | None = None

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    del train  # no dropout at inference; the flag keeps the original signature
    x = inputs
    if self.resnet_layers is not None:
      width = int(64 * self.resnet_width)
      x = StdConv(width, (7, 7), (2, 2), use_bias=False, name="conv_root")(x)
      x = nn.relu(nn.GroupNorm(name="gn_root")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      if self.resnet_layers:
        x = ResNetStage(self.resnet_layers[0], width, (1, 1), name="block1")(x)
        for i, block_size in enumerate(self.resnet_layers[1:], 1):
          x = ResNetStage(block_size, width * 2**i, (2, 2), name=f"block{i + 1}")(x)
      self.sow("intermediates", "resnet_features", x)

    x = nn.Conv(self.hidden_size, self.patch_size, strides=self.patch_size,
                padding="VALID", name="embedding")(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, [n, h * w, c])
    if self.classifier == "token":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, name="Transformer")(x)
    self.sow("intermediates", "encoded", x)

    x = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits")(x))
    self.sow("intermediates", "pre_logits", x)

    num_classes = self.num_classes
    if num_classes is None and self.has_variable("params", "head"):
      num_classes = self.variables["params"]["head"]["bias"].shape[-1]
    if not num_classes:
      return x
    return nn.Dense(num_classes, name="head", kernel_init=nn.initializers.zeros)(x)


def build_model(cfg: ViTConfig, *, features_only: bool = False) -> VisionTransformer:
  """A VisionTransformer for a config (see `configs.get_config`).

  `features_only` drops the head: the model returns the `pre_logits` vector.
  """
  tr, resnet = cfg.transformer, cfg.resnet
  return VisionTransformer(
      patch_size=cfg.patches.size,
      hidden_size=cfg.hidden_size,
      num_layers=tr.num_layers,
      mlp_dim=tr.mlp_dim,
      num_heads=tr.num_heads,
      resnet_layers=None if resnet is None else resnet.num_layers,
      resnet_width=1 if resnet is None else resnet.width_factor,
      classifier=cfg.classifier,
      representation_size=cfg.representation_size,
      num_classes=0 if features_only else cfg.num_classes,
  )
