"""Every name a module lists in `__all__` exists in it (a renamed or removed
function must not stay behind in the list, where `from m import *` and the
docs would still promise it)."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.support.modules import PACKAGES, module_files

_DEFINES_ALL = re.compile(r"^__all__\b", re.MULTILINE)
WITH_ALL = sorted(name for package in PACKAGES
                  for name, path in module_files(package).items()
                  if _DEFINES_ALL.search(path.read_text(encoding="utf-8")))


def test_modules_with_all_are_found():
  # Guards the discovery: were it to find nothing, the check below would pass vacuously.
  assert {"export", "clients", "serving.rest_json"} <= set(WITH_ALL)


@pytest.mark.parametrize("module", WITH_ALL)
def test_all_names_exist(module):
  mod = importlib.import_module(module)
  missing = [name for name in mod.__all__ if not hasattr(mod, name)]
  assert not missing, f"{module}.__all__ names what it does not define: {missing}"
