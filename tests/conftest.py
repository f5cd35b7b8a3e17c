"""Shared fixtures: the reference checkpoints copied from the original code's
outputs (see tests/data/REFERENCE.md). Also the CI's rule on skips:
`--strict-skips` (set by .ci/run) turns every skip whose reason is not in
ALLOWED_SKIPS into a failure, so a missing tool cannot leave a run green."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = Path(__file__).parent / "data"

# Skip reasons CI accepts, each with why. Nothing else may skip there.
ALLOWED_SKIPS = (
    # tests/serving/test_deploy_compose.py: `docker compose config` needs the
    # Docker CLI with its Compose plugin, which neither Debian's nor PyPI's
    # packages provide to a build machine; the compose files are still
    # checked as YAML by the rest of that module.
    "no docker client",
    "the docker client has no Compose plugin",
)


def pytest_addoption(parser: pytest.Parser) -> None:
  parser.addoption("--strict-skips", action="store_true",
                   help="fail every skip whose reason is not in tests/conftest.py's ALLOWED_SKIPS")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
  outcome = yield
  report = outcome.get_result()
  if (report.skipped and not hasattr(report, "wasxfail")
      and item.config.getoption("strict_skips")):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason not in ALLOWED_SKIPS:
      report.outcome = "failed"
      report.longrepr = f"skipped outside tests/conftest.py's ALLOWED_SKIPS: {reason}"


@pytest.fixture(scope="session")
def reference_manifest() -> dict:
  return json.loads((DATA / "manifest.json").read_text())


@pytest.fixture(scope="session")
def data_dir() -> Path:
  return DATA
