"""The TensorFlow side of an export: jax2tf conversion and the serving signatures.

The Flax model is converted once with jax2tf (native serialization, so the
graph holds the model as StableHLO for both "cpu" and "cuda", and the same
files serve on TF Serving's GPU image). Its parameters stay tf.Variables
passed into the converted function, not constants baked into the graph, so
they are saved in `variables/` and are trainable after loading; `with_gradient`
serializes the VJP too, so gradients flow through a re-loaded SavedModel. The
batch dimension is polymorphic: one graph for every batch size (each new size
is compiled by XLA on first use, which is why exports carry warmup requests).

Signatures, inputs, outputs and in-graph preprocessing are the table in
`contract` (docs/design.md, "The SavedModel contract"); this module
builds one tf.function per row, so a new row needs no code here unless it
adds a preprocessing step (`_STEPS`):

  serving_default  images       float32 [b, S, S, 3], already preprocessed
  predict_uint8    images       uint8   [b, S, S, 3], raw pixels at size S
  predict_bytes    image_bytes  string  [b], encoded JPEG/PNG/GIF/BMP, any size

  classifier: logits, probabilities [b, C]; top_k_scores, top_k_classes
              (int32), top_k_labels (string) [b, k], k = min(5, C)
  features:   features [b, D] (the pre_logits vector)

An empty batch (b = 0) returns empty outputs ([0, C], [0, k], [0, D]) rather
than an error: the converted graph itself rejects b = 0, so the model runs on
one zero image that is then sliced away.

Preprocessing, identical in all three entry points; clients that send
`serving_default` float32 tensors must compute exactly this:

  1. Decode (predict_bytes only): `tf.io.decode_image(channels=3,
     expand_animations=False)` -> uint8 RGB (grayscale is repeated to three
     channels, alpha is dropped, an animation gives its first frame). JPEG is
     decoded with `dct_method="INTEGER_ACCURATE"` (libjpeg's JDCT_ISLOW with
     fancy upsampling, what PIL uses), so PIL-decoded pixels match.
  2. Resize (predict_bytes only; predict_uint8 requires size S already) to
     S x S with `tf.image.resize(method="bilinear", antialias=False)`: bilinear,
     half-pixel centers, no crop, aspect ratio not kept, computed in float32
     on the uint8 values, no rounding afterwards. Per axis, with `n` input
     pixels and output index i in [0, S):
         src  = (i + 0.5) * (n / S) - 0.5
         i0   = floor(src);  frac = src - i0
         lo   = clip(i0, 0, n - 1);  hi = clip(i0 + 1, 0, n - 1)
         out  = v[lo] + (v[hi] - v[lo]) * frac
     applied along the width first, then along the height. When n == S this
     is the identity.
  3. Scale: x = (pixels - 127.5) / 127.5 in float32, giving [-1, 1].
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

import contract

PLATFORMS = ("cpu", "cuda")


def scale_pixels(pixels: tf.Tensor) -> tf.Tensor:
  """uint8 (or float) pixel values in [0, 255] -> float32 in [-1, 1]."""
  center = contract.PIXEL_CENTER
  return (tf.cast(pixels, tf.float32) - center) / center


def decode_and_resize(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
  """One encoded image (scalar string) -> float32 [size, size, 3] pixel values
  in [0, 255], as described in the module docstring (steps 1 and 2)."""
  pixels = tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
  pixels = tf.ensure_shape(pixels, [None, None, 3])
  resized = tf.image.resize(tf.cast(pixels, tf.float32), [size, size],
                            method="bilinear", antialias=False)
  return tf.ensure_shape(resized, [size, size, 3])


def convert(apply_fn: Callable[[Any, jax.Array], jax.Array], image_size: int
            ) -> Callable[[Any, tf.Tensor], tf.Tensor]:
  """jax2tf-converts `apply_fn(params, images)` with a polymorphic batch."""
  return jax2tf.convert(
      apply_fn,
      polymorphic_shapes=[None, f"(b, {image_size}, {image_size}, 3)"],
      native_serialization_platforms=PLATFORMS,
      with_gradient=True)


def to_variables(params: Any) -> Any:
  """The params tree with every array as a tf.Variable named by its path."""
  def make(path: tuple[Any, ...], value: Any) -> tf.Variable:
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    return tf.Variable(np.asarray(value, np.float32), trainable=True, name=name)
  return jax.tree_util.tree_map_with_path(make, params)


def _nonempty(model: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor) -> tf.Tensor:
  """`model(images)`, also for an empty batch: jax2tf graphs require b >= 1,
  so a zero image is appended when b == 0 and its output is dropped. Free of
  control flow, so gradients flow through it."""
  n = tf.shape(images)[0]
  padding = [[0, tf.maximum(1 - n, 0)]] + [[0, 0]] * (images.shape.rank - 1)
  return model(tf.pad(images, padding))[:n]


def build_servable(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                   image_size: int, kind: str, labels: Sequence[str] | None = None
                   ) -> tuple[tf.train.Checkpoint, dict[str, Any]]:
  """The object to save and its signatures.

  The object follows TF Hub's reusable-SavedModel convention, so a loaded
  export is usable from TensorFlow code: `obj(images)` returns the logits
  (classifier) or features (feature extractor) for float32 images in
  [-1, 1], and `obj.variables` / `obj.trainable_variables` list the
  parameters (a tf.train.Checkpoint root, because tf.Module's properties of
  those names are not saved).
  """
  if kind not in contract.KINDS:
    raise ValueError(f"kind must be one of {contract.KINDS}, got {kind!r}")
  converted = convert(apply_fn, image_size)
  obj = tf.train.Checkpoint()
  obj.params = to_variables(params)
  obj.variables = tf.nest.flatten(obj.params)
  obj.trainable_variables = list(obj.variables)
  s = image_size

  @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32)])
  def call(images: tf.Tensor) -> tf.Tensor:
    return _nonempty(lambda x: converted(obj.params, x), images)

  if kind == "classifier":
    if labels is None:
      raise ValueError("a classifier export needs labels")
    label_table = tf.constant(list(labels), tf.string)

    def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
      logits = call(images)
      probabilities = tf.nn.softmax(logits, axis=-1)
      k = min(contract.TOP_K, len(labels))
      scores, classes = tf.math.top_k(probabilities, k=k)
      return {"logits": logits, "probabilities": probabilities, "top_k_scores": scores,
              "top_k_classes": classes, "top_k_labels": tf.gather(label_table, classes)}
  else:
    def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
      return {"features": call(images)}

  obj.__call__ = call
  return obj, {spec.name: _signature(spec, s, outputs) for spec in contract.SIGNATURES}


def input_spec(spec: contract.SignatureContract, image_size: int) -> tf.TensorSpec:
  """The TensorSpec of a contract row's input at a given image size."""
  shape = [None if d == contract.BATCH else image_size if d == contract.SIZE else d
           for d in spec.shape]
  return tf.TensorSpec(shape, tf.dtypes.as_dtype(spec.dtype), name=spec.input_key)


def _decode_resize(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
  return tf.map_fn(lambda b: decode_and_resize(b, size), image_bytes,
                   fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


# The in-graph preprocessing steps a contract row may name, by name.
_STEPS: dict[str, Callable[[tf.Tensor, int], tf.Tensor]] = {
    contract.DECODE_RESIZE: _decode_resize,
    contract.SCALE: lambda pixels, size: scale_pixels(pixels),
}


def _signature(spec: contract.SignatureContract, image_size: int,
               outputs: Callable[[tf.Tensor], dict[str, tf.Tensor]]) -> Any:
  """The concrete function of one contract row: its steps, then the model."""
  @tf.function(autograph=False, input_signature=[input_spec(spec, image_size)])
  def serve(value: tf.Tensor) -> dict[str, tf.Tensor]:
    for step in spec.steps:
      value = _STEPS[step](value, image_size)
    return outputs(value)
  return serve.get_concrete_function()


def example_input(spec: contract.SignatureContract, pixels: np.ndarray) -> np.ndarray:
  """What a client sends to `spec` for uint8 pixels [b, S, S, 3]: the pixels
  scaled (no steps), as they are (SCALE only) or PNG-encoded (lossless, so
  the graph decodes the same pixels). Warmup and verification build their
  inputs with it, so every contract row gets one without code of its own."""
  if not spec.steps:
    center = np.float32(contract.PIXEL_CENTER)
    return ((pixels.astype(np.float32) - center) / center).astype(spec.dtype)
  if spec.steps[0] == contract.DECODE_RESIZE:
    return np.array([tf.io.encode_png(p).numpy() for p in pixels], dtype=object)
  return pixels.astype(spec.dtype)
