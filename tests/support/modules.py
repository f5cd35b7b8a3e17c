"""The project's Python modules, found from the files (nothing is imported)."""

from __future__ import annotations

from pathlib import Path

from tests.support.paths import ROOT

PACKAGES = ("export", "serving", "clients", "contract", "ops", "benchmarks", "checks")
"""The project's top-level packages (tests/ aside)."""


def module_files(package: str, root: Path = ROOT) -> dict[str, Path]:
  """Dotted module name -> file, for every .py file below `root/package`."""
  found = {}
  for path in sorted((root / package).rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    found[".".join(parts)] = path
  return found
