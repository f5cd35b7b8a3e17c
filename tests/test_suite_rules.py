"""The rules tests/conftest.py sets for a run: `--strict-skips` fails every
skip outside ALLOWED_SKIPS, and LONG_MODULES name real modules and run
first. Checked on a scratch suite under tests/conftest.py, in a child
pytest, so that this run's own options play no part."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests import conftest
from tests.support.paths import ROOT

_SCRATCH_TESTS = '''
import pytest

def test_allowed():
  pytest.skip("the docker client has no Compose plugin")

def test_not_allowed():
  pytest.skip("kubectl not found")
'''


def _scratch_run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
  shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
  (tmp_path / "test_scratch.py").write_text(_SCRATCH_TESTS)
  return subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly", "-p", "no:cacheprovider",
       "-p", "no:xdist", "--rootdir", str(tmp_path), *options, str(tmp_path)],
      cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"})


def test_strict_skips_fail_a_skip_outside_the_allowlist(tmp_path):
  done = _scratch_run(tmp_path, "--strict-skips")
  assert done.returncode == 1, done.stdout
  assert "1 failed, 1 skipped" in done.stdout
  assert "skipped outside tests/conftest.py's ALLOWED_SKIPS: kubectl not found" in done.stdout


def test_without_strict_skips_both_skip(tmp_path):
  done = _scratch_run(tmp_path)
  assert done.returncode == 0 and "2 skipped" in done.stdout, done.stdout


def test_long_modules_exist():
  assert [m for m in conftest.LONG_MODULES if not (ROOT / m).is_file()] == []


class _Item:
  def __init__(self, nodeid: str):
    self.nodeid = nodeid


def test_long_modules_go_first_and_keep_their_order():
  long_a, long_b = conftest.LONG_MODULES[1], conftest.LONG_MODULES[0]
  items = [_Item(n) for n in ("tests/a.py::t1", f"{long_a}::x", "tests/b.py::t2",
                              f"{long_b}::y", f"{long_a}::z")]
  conftest.pytest_collection_modifyitems(items)
  assert [i.nodeid for i in items] == [f"{long_a}::x", f"{long_b}::y", f"{long_a}::z",
                                       "tests/a.py::t1", "tests/b.py::t2"]
