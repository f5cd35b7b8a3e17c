"""numpy preprocessing == TensorFlow's (the exported graph's) preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from clients import preprocessing


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
  # Smooth gradients plus noise: like a photo, not constant, not pure noise.
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                   (x + y) % 64 * 4], axis=-1)
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape,size", [((427, 640), 224), ((50, 37), 32), ((20, 20), 32),
                                        ((32, 32), 32), ((7, 300), 24), ((1, 1), 5)])
def test_resize_matches_tf_image_resize_bilinear(shape, size):
  image = _image(*shape)
  expected = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                             antialias=False).numpy()
  np.testing.assert_allclose(preprocessing.resize_bilinear(image, size), expected,
                             rtol=0, atol=1e-4)


def test_pil_bilinear_would_not_match_when_downscaling():
  # Why the resize is implemented here: PIL antialiases when shrinking.
  image = _image(427, 640)
  expected = tf.image.resize(tf.cast(image, tf.float32), [224, 224]).numpy()
  pil = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR), np.float32)
  assert np.abs(pil - expected).max() > 10


def test_preprocess_matches_the_exported_graph_for_png_and_jpeg():
  # The exporter's in-graph steps (export/signatures.py docstring): decode
  # (JPEG with INTEGER_ACCURATE), bilinear resize without antialias, scale.
  image = _image(90, 70, seed=1)
  for fmt, decode in (("PNG", lambda b: tf.io.decode_image(b, channels=3)),
                      ("JPEG", lambda b: tf.io.decode_jpeg(b, channels=3,
                                                           dct_method="INTEGER_ACCURATE"))):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    data = buffer.getvalue()
    pixels = tf.cast(decode(data), tf.float32)
    expected = ((tf.image.resize(pixels, [32, 32], method="bilinear") - 127.5) / 127.5).numpy()
    ours = preprocessing.preprocess(data, 32)
    assert ours.dtype == np.float32 and ours.shape == (32, 32, 3)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, err_msg=fmt)


def test_load_image_modes_and_batches(tmp_path):
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
  rgba = np.dstack([_image(8, 8), np.full((8, 8), 7, np.uint8)])
  Image.fromarray(gray).save(tmp_path / "gray.png")
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  np.testing.assert_array_equal(preprocessing.load_image(tmp_path / "gray.png"),
                                np.repeat(gray[:, :, None], 3, axis=2))
  np.testing.assert_array_equal(preprocessing.load_image(str(tmp_path / "rgba.png")),
                                rgba[:, :, :3])
  batch = preprocessing.preprocess_batch([tmp_path / "gray.png", rgba], 4)
  assert batch.shape == (2, 4, 4, 3) and batch.min() >= -1 and batch.max() <= 1
  np.testing.assert_array_equal(preprocessing.resize_uint8(rgba, 8), rgba[:, :, :3])
  small = preprocessing.resize_uint8(_image(16, 16), 8)
  assert small.dtype == np.uint8 and small.shape == (8, 8, 3)
