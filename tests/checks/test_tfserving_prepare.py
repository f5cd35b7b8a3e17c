"""The JAX-side reference of `make check-tfserving` (checks/tfserving_prepare.py).

The check compares served outputs with what these functions feed the Flax
model, so they must follow the SavedModel contract (contract/__init__.py) for
every signature: a wrong reference would fail the check for the wrong reason,
or, worse, agree with a wrong export.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from checks import tfserving_plan as plan
from checks import tfserving_prepare as prepare
import contract


def test_every_signature_gets_requests_at_every_batch_size() -> None:
  logs = prepare.check_requests("m", 8, seed=0)
  seen = {}
  for log in logs:
    signature, inputs = plan.request_inputs(log)
    row = contract.BY_NAME[signature]
    assert set(inputs) == {row.input_key}
    seen.setdefault(signature, []).append(len(inputs[row.input_key]))
  assert seen == {row.name: list(prepare.BATCH_SIZES) for row in contract.SIGNATURES}


def test_all_signatures_reach_the_model_as_the_same_scaled_images() -> None:
  # One batch of pixels through each entry point: the reference inputs agree,
  # and equal the contract's (x - 127.5) / 127.5.
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  scaled = (pixels.astype(np.float32) - 127.5) / 127.5
  for row in contract.SIGNATURES:
    value = prepare._signature_input(row, scaled, pixels)
    got = prepare.model_inputs(row.name, {row.input_key: value}, 8)
    np.testing.assert_array_equal(got, scaled, err_msg=row.name)
    assert got.dtype == np.float32


def test_an_unknown_signature_has_no_reference() -> None:
  row = dataclasses.replace(contract.IMAGES, name="new", steps=("sharpen",))
  with pytest.raises(ValueError, match="no check inputs"):
    prepare._signature_input(row, np.zeros((1, 8, 8, 3), np.float32),
                             np.zeros((1, 8, 8, 3), np.uint8))


def test_classifier_expectations_derive_from_the_logits() -> None:
  logits = np.array([[1.0, 2.0, 0.5, -1.0, 3.0, 0.0, 0.2]], np.float32)
  out = prepare.expected_outputs(lambda x: logits[:len(x)], np.zeros((1, 8, 8, 3)),
                                 "classifier")
  probabilities = np.exp(logits) / np.exp(logits).sum()
  np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-6)
  np.testing.assert_allclose(out["top_k_scores"][0], np.sort(probabilities[0])[::-1][:5],
                             rtol=1e-6)
  empty = prepare.expected_outputs(lambda x: np.ones((len(x), 4), np.float32),
                                   np.zeros((0, 8, 8, 3), np.float32), "features")
  assert empty["features"].shape == (0, 4)
