"""Weighted, sticky A/B routing (no server needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.routing import Arm, Router, key_point, label_arms, version_arms

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"user-{i}" for i in range(10000)]


def test_same_key_same_arm_and_configured_split():
  router = Router(label_arms({"stable": 90, "canary": 10}))
  first = {key: router.choose(key).name for key in KEYS}
  assert all(router.choose(key).name == first[key] for key in KEYS[:1000])
  share = sum(arm == "canary" for arm in first.values()) / len(KEYS)
  assert abs(share - 0.10) < 0.015, share
  canaries = sum(first[k] == "canary" for k in KEYS + KEYS[:1000])
  assert router.counts() == {"stable": 11000 - canaries, "canary": canaries}
  router.reset_counts()
  assert router.counts() == {"stable": 0, "canary": 0}


def test_assignment_is_stable_across_processes():
  # Python's hash() is salted per process; the router must not depend on it.
  code = ("from clients.routing import Router, label_arms; "
          "r = Router(label_arms({'stable': 50, 'canary': 50}), salt='exp1'); "
          "print(''.join(r.choose(f'user-{i}').name[0] for i in range(200)))")
  outputs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, text=True,
                            capture_output=True, env=dict(os.environ, PYTHONHASHSEED=seed)
                            ).stdout.strip() for seed in ("1", "2")}
  router = Router(label_arms({"stable": 50, "canary": 50}), salt="exp1")
  here = "".join(router.choose(f"user-{i}").name[0] for i in range(200))
  assert outputs == {here}
  assert 60 < here.count("c") < 140


def test_salt_gives_an_independent_assignment():
  a = Router(label_arms({"x": 50, "y": 50}), salt="one")
  b = Router(label_arms({"x": 50, "y": 50}), salt="two")
  same = sum(a.choose(k).name == b.choose(k).name for k in KEYS[:2000]) / 2000
  assert 0.4 < same < 0.6


def test_changing_weights_moves_only_the_changed_slice():
  before = Router(label_arms({"stable": 90, "canary": 10}))
  after = Router(label_arms({"stable": 80, "canary": 20}))
  moved = [k for k in KEYS if before.choose(k).name != after.choose(k).name]
  assert all(before.choose(k).name == "stable" for k in moved)  # only stable -> canary
  assert abs(len(moved) / len(KEYS) - 0.10) < 0.015


def test_keyless_calls_follow_the_weights_and_zero_weight_is_never_chosen():
  router = Router(version_arms({1: 3, 2: 1}) + [Arm("off", 0, version=9)], seed=0)
  for _ in range(4000):
    router.choose()
  counts = router.counts()
  assert counts["off"] == 0
  assert abs(counts["v2"] / 4000 - 0.25) < 0.03
  assert all(Router([Arm("only", 1, version=1), Arm("never", 0, label="x")]).choose(k).name
             == "only" for k in KEYS[:500])


def test_key_point_is_uniform_in_unit_interval():
  points = [key_point(k) for k in KEYS]
  assert all(0 <= p < 1 for p in points)
  assert abs(sum(p < 0.5 for p in points) / len(points) - 0.5) < 0.02
  assert key_point("a") == key_point(b"a") != key_point("a", salt="s")


def test_invalid_configurations_are_rejected():
  with pytest.raises(ValueError, match="unique"):
    Router([Arm("a", 1, version=1), Arm("a", 1, version=2)])
  with pytest.raises(ValueError, match="all be zero"):
    Router([Arm("a", 0, version=1)])
  with pytest.raises(ValueError, match="negative"):
    Arm("a", -1)
  with pytest.raises(ValueError, match="not both"):
    Arm("a", 1, version=1, label="x")
