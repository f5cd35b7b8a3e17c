"""Weighted A/B routing between versions or version labels of one model.

A caller key (a user or session id) is hashed with SHA-256 (stable across
processes and machines, unlike Python's salted `hash()`) to a point in
[0, 1); the arms own consecutive slices of [0, 1) in proportion to their
weights, so a key always lands on the same arm while the weights stay the
same, and changing 90/10 to 80/20 moves only the keys in the changed slice.
`salt` gives an experiment its own, independent assignment. Calls without a
key are assigned at random by weight. Per-arm counts are kept for the caller
(e.g. to compare arms' traffic, or export as metrics).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import random
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from clients.base import Client
from clients.results import Prediction


@dataclasses.dataclass(frozen=True)
class Arm:
  """One side of the experiment: a version or a label, and its weight."""
  name: str
  weight: float
  version: int | None = None
  label: str | None = None

  def __post_init__(self) -> None:
    if self.weight < 0:
      raise ValueError(f"arm {self.name!r}: negative weight {self.weight}")
    if self.version is not None and self.label is not None:
      raise ValueError(f"arm {self.name!r}: give a version or a label, not both")


def label_arms(weights: Mapping[str, float]) -> list[Arm]:
  """Arms named after version labels: {"stable": 90, "canary": 10}."""
  return [Arm(label, weight, label=label) for label, weight in weights.items()]


def version_arms(weights: Mapping[int, float]) -> list[Arm]:
  """Arms for version numbers: {1: 90, 2: 10} (named "v1", "v2")."""
  return [Arm(f"v{version}", weight, version=version) for version, weight in weights.items()]


class Router:
  """Chooses an arm per call: sticky per key, weighted, thread-safe counts."""

  def __init__(self, arms: Sequence[Arm], *, salt: str = "", seed: int | None = None):
    if not arms:
      raise ValueError("a router needs at least one arm")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
      raise ValueError(f"arm names must be unique, got {names}")
    total = float(sum(a.weight for a in arms))
    if total <= 0:
      raise ValueError("the arms' weights must not all be zero")
    self.arms = list(arms)
    self.salt = salt
    # Arm i owns [bounds[i-1], bounds[i]); a zero-weight arm's slice is empty.
    self._bounds = list(itertools.accumulate(a.weight / total for a in arms))
    last = max(i for i, a in enumerate(arms) if a.weight > 0)
    self._bounds[last:] = [1.0] * (len(arms) - last)  # no rounding gap before 1
    self._random = random.Random(seed)
    self._lock = threading.Lock()
    self._counts = {name: 0 for name in names}

  def choose(self, key: str | bytes | None = None) -> Arm:
    """The arm for `key` (always the same one), or a weighted draw if None."""
    point = self._draw() if key is None else key_point(key, self.salt)
    arm = self.arms[bisect.bisect_right(self._bounds, point)]
    with self._lock:
      self._counts[arm.name] += 1
    return arm

  def _draw(self) -> float:
    with self._lock:
      return self._random.random()

  def counts(self) -> dict[str, int]:
    """How many calls each arm got so far."""
    with self._lock:
      return dict(self._counts)

  def reset_counts(self) -> None:
    with self._lock:
      self._counts = dict.fromkeys(self._counts, 0)


def key_point(key: str | bytes, salt: str = "") -> float:
  """A key's stable position in [0, 1): the first 8 bytes of SHA-256(salt:key)."""
  data = key if isinstance(key, bytes) else key.encode("utf-8")
  digest = hashlib.sha256(salt.encode("utf-8") + b":" + data).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


class RoutedClient:
  """A client whose predictions go to the arm the router picks for the key.

  Returned predictions carry the arm's name in `Prediction.arm`.
  """

  def __init__(self, client: Client, model: str, router: Router):
    self.client = client
    self.model = model
    self.router = router

  def _target(self, key: str | bytes | None) -> tuple[Arm, dict[str, Any]]:
    arm = self.router.choose(key)
    return arm, {"version": arm.version, "label": arm.label}

  def predict_images(self, images: np.ndarray, *, key: str | bytes | None = None,
                     **kwargs: Any) -> Prediction:
    arm, target = self._target(key)
    return _tag(self.client.predict_images(self.model, images, **target, **kwargs), arm)

  def predict_pixels(self, pixels: np.ndarray, *, key: str | bytes | None = None,
                     **kwargs: Any) -> Prediction:
    arm, target = self._target(key)
    return _tag(self.client.predict_pixels(self.model, pixels, **target, **kwargs), arm)

  def predict_encoded(self, images: Sequence[Any], *, key: str | bytes | None = None,
                      **kwargs: Any) -> Prediction:
    arm, target = self._target(key)
    return _tag(self.client.predict_encoded(self.model, images, **target, **kwargs), arm)


def _tag(prediction: Prediction, arm: Arm) -> Prediction:
  prediction.arm = arm.name
  return prediction
