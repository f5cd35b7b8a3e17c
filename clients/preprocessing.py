"""Client-side preprocessing that reproduces the model's own, in numpy and PIL.

The SavedModel's `predict_uint8`/`predict_bytes` signatures resize in the graph
with `tf.image.resize(..., "bilinear")`: half-pixel centers, no antialiasing,
float32 arithmetic. PIL's BILINEAR filter antialiases when it shrinks an image
(it widens the kernel), so it gives different pixels; `resize_bilinear` below
implements TensorFlow's kernel instead, with the same weights and the same
order of float32 operations, so a batch preprocessed here and sent to
`serving_default` gets the same answer as the bytes sent to `predict_bytes`.
There is no crop: the whole image is resized to the model's square input.

Scaling is (x - 127.5) / 127.5, to [-1, 1], as in the original ViT input
pipeline. Images are decoded by PIL as RGB without applying EXIF rotation,
which is what TensorFlow's decoders do.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Union

import numpy as np

ImageSource = Union[str, os.PathLike, bytes, np.ndarray]


def load_image(source: ImageSource) -> np.ndarray:
  """uint8 RGB pixels [H, W, 3] of a file path, encoded bytes, or an array."""
  if isinstance(source, np.ndarray):
    return _as_rgb(source)
  from PIL import Image  # only callers that decode pay for PIL

  data = source if isinstance(source, bytes) else _read(source)
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


def read_bytes(source: str | os.PathLike | bytes) -> bytes:
  """The encoded bytes of an image file (what `predict_bytes` sends)."""
  return source if isinstance(source, bytes) else _read(source)


def resize_bilinear(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """float32 [h, w, C] = tf.image.resize(image, size, "bilinear"), antialias off.

  `image` is [H, W, C] of any real dtype; the result is not rounded.
  """
  height, width = (size, size) if isinstance(size, int) else size
  pixels = image.astype(np.float32, copy=False)
  y_lo, y_hi, y_lerp = _weights(height, pixels.shape[0])
  x_lo, x_hi, x_lerp = _weights(width, pixels.shape[1])
  x_lerp = x_lerp[None, :, None]
  top_rows, bottom_rows = pixels[y_lo], pixels[y_hi]
  top = top_rows[:, x_lo] + (top_rows[:, x_hi] - top_rows[:, x_lo]) * x_lerp
  bottom = bottom_rows[:, x_lo] + (bottom_rows[:, x_hi] - bottom_rows[:, x_lo]) * x_lerp
  return top + (bottom - top) * y_lerp[:, None, None]


def _weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  # TensorFlow's compute_interpolation_weights with HalfPixelScaler, in float32.
  scale = np.float32(in_size) / np.float32(out_size)
  centers = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(centers)
  lower = np.maximum(floor.astype(np.int64), 0)
  upper = np.minimum(np.ceil(centers).astype(np.int64), in_size - 1)
  return lower, upper, (centers - floor).astype(np.float32)


def scale(pixels: np.ndarray) -> np.ndarray:
  """float32 model input in [-1, 1] from pixel values in [0, 255]."""
  return (pixels.astype(np.float32, copy=False) - np.float32(127.5)) / np.float32(127.5)


def preprocess(image: ImageSource, size: int) -> np.ndarray:
  """float32 [size, size, 3] model input, as the model's own preprocessing makes it."""
  return scale(resize_bilinear(load_image(image), size))


def preprocess_batch(images: Iterable[ImageSource], size: int) -> np.ndarray:
  """float32 [b, size, size, 3] for `serving_default`."""
  return np.stack([preprocess(image, size) for image in images])


def resize_uint8(image: ImageSource, size: int) -> np.ndarray:
  """uint8 [size, size, 3] for `predict_uint8`: resized, then rounded to pixels.

  Rounding loses what the float resize keeps, so this is close to, not equal
  to, sending the original bytes; an image already at the model's size is
  passed through unchanged.
  """
  pixels = load_image(image)
  if pixels.shape[:2] == (size, size):
    return pixels
  return np.clip(np.rint(resize_bilinear(pixels, size)), 0, 255).astype(np.uint8)


def _as_rgb(array: np.ndarray) -> np.ndarray:
  if array.ndim == 2:
    array = np.repeat(array[:, :, None], 3, axis=2)
  if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
    raise ValueError(f"an image array must be [H, W], [H, W, 1|3|4], got {array.shape}")
  if array.shape[2] == 1:
    array = np.repeat(array, 3, axis=2)
  return array[:, :, :3]


def _read(path: str | os.PathLike) -> bytes:
  with open(path, "rb") as f:
    return f.read()
