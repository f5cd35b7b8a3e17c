"""Shared fixtures: the reference checkpoints copied from the original code's
outputs (see tests/data/REFERENCE.md)."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def reference_manifest() -> dict:
  return json.loads((DATA / "manifest.json").read_text())


@pytest.fixture(scope="session")
def data_dir() -> Path:
  return DATA
