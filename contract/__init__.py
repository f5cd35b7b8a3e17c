"""The SavedModel contract, written once as data.

Every exported version has the signatures in `SIGNATURES` and, by kind, the
outputs in `OUTPUTS`. The exporter builds the signatures from this table
(`export/signatures.py`), verifies each one against the JAX model
(`export/exporter.py`) and writes warmup requests for each
(`export/warmup.py`); the clients send to them (`clients/base.py`, and through
it `clients/routing.py`). A new signature is one more row here plus, if it
needs one, a new preprocessing step in `export/signatures.py`.

It lives in `clients/` because the clients may not import `export/` (nor
TensorFlow) while `export/` may import `clients/`; it is plain data so both
sides read it without pulling in the other's dependencies. See
docs/design.md, "The SavedModel contract", for the table in prose and the
exact preprocessing arithmetic.
"""

from __future__ import annotations

import dataclasses

# Shape symbols: `BATCH` is the polymorphic batch dimension, `SIZE` the
# model's square input size S, `CLASSES` its number of classes C, `TOP` the
# exported k = min(TOP_K, C), `FEATURES` the pre_logits width D.
BATCH, SIZE, CLASSES, TOP, FEATURES = "b", "S", "C", "k", "D"
Dim = str | int

# Preprocessing steps done in the graph, in order (export/signatures.py):
# DECODE_RESIZE: encoded JPEG/PNG/GIF/BMP -> RGB, bilinear resize to S x S;
# SCALE: pixel values in [0, 255] -> float32 (x - PIXEL_CENTER) / PIXEL_CENTER.
DECODE_RESIZE, SCALE = "decode_resize", "scale"
PIXEL_CENTER = 127.5

TOP_K = 5
"""Classifiers return their top min(TOP_K, C) classes."""


@dataclasses.dataclass(frozen=True)
class SignatureContract:
  """One serving signature: its single input and the steps the graph applies
  to it before the model (which always sees float32 [b, S, S, 3] in [-1, 1])."""
  name: str
  input_key: str
  dtype: str                      # TensorFlow dtype name of the input
  shape: tuple[Dim, ...]
  steps: tuple[str, ...]
  summary: str


@dataclasses.dataclass(frozen=True)
class OutputContract:
  """One output of every signature of a kind of export."""
  name: str
  dtype: str
  shape: tuple[Dim, ...]


IMAGES = SignatureContract(
    "serving_default", "images", "float32", (BATCH, SIZE, SIZE, 3), (),
    "preprocessed images in [-1, 1] (clients.preprocessing computes the same)")
PIXELS = SignatureContract(
    "predict_uint8", "images", "uint8", (BATCH, SIZE, SIZE, 3), (SCALE,),
    "raw RGB pixels, already at size S")
ENCODED = SignatureContract(
    "predict_bytes", "image_bytes", "string", (BATCH,), (DECODE_RESIZE, SCALE),
    "encoded JPEG/PNG/GIF/BMP images of any size")

SIGNATURES: tuple[SignatureContract, ...] = (IMAGES, PIXELS, ENCODED)
BY_NAME: dict[str, SignatureContract] = {s.name: s for s in SIGNATURES}
DEFAULT = IMAGES
"""TF Serving's default signature key ("serving_default") is this row."""

OUTPUTS: dict[str, tuple[OutputContract, ...]] = {
    "classifier": (
        OutputContract("logits", "float32", (BATCH, CLASSES)),
        OutputContract("probabilities", "float32", (BATCH, CLASSES)),
        OutputContract("top_k_scores", "float32", (BATCH, TOP)),
        OutputContract("top_k_classes", "int32", (BATCH, TOP)),
        OutputContract("top_k_labels", "string", (BATCH, TOP)),
    ),
    "features": (OutputContract("features", "float32", (BATCH, FEATURES)),),
}
KINDS = tuple(OUTPUTS)
"""What an export returns: a "classifier" head or the "features" (pre_logits)."""

MODEL_OUTPUT = {"classifier": "logits", "features": "features"}
"""The output that is the model's own result (the rest derive from it)."""
