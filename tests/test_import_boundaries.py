"""The import boundaries of docs/design.md ("Package boundaries") hold.

Two checks per rule: every import statement in the package's files (top
level, in functions, under TYPE_CHECKING alike), read with `ast`; and, for
the libraries a package must run without, a fresh interpreter that imports
every module of the package and then looks at `sys.modules`, which also
catches a forbidden library pulled in through a third-party dependency.

A new package is one more `Boundary` row.

TensorFlow itself imports JAX when it is installed (tensorflow/lite/python/
util.py tries to), so in this environment only the `ast` check can hold
serving/ to "never imports JAX"; the `sys.modules` check holds it to never
loading export/ or Flax.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.modules import module_files
from tests.support.paths import ROOT

TENSORFLOW = ("tensorflow", "tensorflow_serving", "keras", "tf_keras")
JAX = ("jax", "jaxlib", "flax", "optax")


@dataclasses.dataclass(frozen=True)
class Boundary:
  """What a package's modules may import.

  `never`: module prefixes it must not import. `only`, when set: besides the
  standard library and the package itself, the only prefixes it may import.
  `not_loaded`: prefixes that must not even be in `sys.modules` once all of
  its modules are imported."""
  package: str
  never: tuple[str, ...] = ()
  only: tuple[str, ...] | None = None
  not_loaded: tuple[str, ...] = ()


_NOT_TF_NOR_JAX = ("export", "serving", *TENSORFLOW, *JAX)
# As docs/design.md's table of packages says: nothing imports ops/, the
# operators' tools, which sit downstream of everything else.
BOUNDARIES = (
    Boundary("export", never=("serving", "ops"), not_loaded=("serving", "ops")),
    Boundary("serving", never=("export", "ops", *JAX),
             not_loaded=("export", "ops", "flax", "optax")),
    Boundary("clients", never=(*_NOT_TF_NOR_JAX, "ops"), not_loaded=(*_NOT_TF_NOR_JAX, "ops")),
    Boundary("ops", never=_NOT_TF_NOR_JAX, not_loaded=_NOT_TF_NOR_JAX),
    Boundary("contract", only=("google.protobuf", "numpy")),
)
PRESENT = [b for b in BOUNDARIES if (ROOT / b.package).is_dir()]

EXEMPT = {
    # Regenerates contract/tf_serving_protos.binpb at development time from
    # the tensorflow-serving-api and grpcio-health-checking wheels (function-
    # local imports); the clients
    # read the written file and never run this.
    "contract/_gen_protos.py": ("tensorflow_serving", "grpc_health"),
}


def imports(path: Path, module: str) -> set[str]:
  """The dotted names `path` imports: `import a.b` gives a.b, `from a import
  b` gives a.b; relative imports are resolved against `module`."""
  is_package = path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = module.split(".")
        parent = parent[:len(parent) - node.level + is_package]
        base = ".".join(parent + ([base] if base else []))
      found.update(f"{base}.{alias.name}" for alias in node.names)
  return found


def _under(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


def violations(boundary: Boundary, root: Path = ROOT) -> list[str]:
  """`file: imported name` for every import that crosses the boundary."""
  bad = []
  for module, path in module_files(boundary.package, root).items():
    rel = path.relative_to(root).as_posix()
    for name in sorted(imports(path, module)):
      if any(_under(name, p) for p in EXEMPT.get(rel, ())):
        continue
      crossed = any(_under(name, p) for p in boundary.never)
      if boundary.only is not None:
        top = name.split(".")[0]
        crossed |= not (top in sys.stdlib_module_names or _under(name, boundary.package)
                        or any(_under(name, p) for p in boundary.only))
      if crossed:
        bad.append(f"{rel}: {name}")
  return bad


def test_the_documented_packages_are_checked():
  # A renamed package must not leave its rule checking nothing.
  assert {"export", "serving", "clients", "contract", "ops"} <= {b.package for b in PRESENT}


def test_import_parser_sees_every_form(tmp_path):
  source = tmp_path / "mod.py"
  source.write_text("import a.b\nfrom c import d\nfrom . import e\nfrom .f import g\n"
                    "def h():\n  import tensorflow as tf\n")
  assert imports(source, "pkg.mod") == {"a.b", "c.d", "pkg.e", "pkg.f.g", "tensorflow"}


def test_a_crossing_is_reported(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "__init__.py").write_text("import json\nfrom serving import core\n")
  (tmp_path / "pkg" / "m.py").write_text("from . import x\nimport numpy\n")
  assert violations(Boundary("pkg", never=("serving",)), tmp_path) == [
      "pkg/__init__.py: serving.core"]
  assert violations(Boundary("pkg", only=("numpy",)), tmp_path) == [
      "pkg/__init__.py: serving.core"]


@pytest.mark.parametrize("boundary", PRESENT, ids=lambda b: b.package)
def test_imports_stay_inside_the_boundary(boundary):
  assert violations(boundary) == []


# Imports every named module, then prints which of the given prefixes loaded.
_PROBE = """
import importlib, json, sys
modules, prefixes = json.loads(sys.argv[1])
for m in modules:
  importlib.import_module(m)
print(json.dumps(sorted({n for n in sys.modules for p in prefixes
                         if n == p or n.startswith(p + ".")})))
"""


@pytest.mark.parametrize("boundary", [b for b in PRESENT if b.not_loaded],
                         ids=lambda b: b.package)
def test_importing_the_package_loads_nothing_forbidden(boundary):
  modules = sorted(module_files(boundary.package))
  done = subprocess.run(
      [sys.executable, "-c", _PROBE, json.dumps([modules, list(boundary.not_loaded)])],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.splitlines()[-1]) == []


# How `python -m serving` and the export CLIs import TensorFlow. Its __init__
# would otherwise import Keras 3 and scikit-learn eagerly, a third of the
# start-up; tensorflow_model_server has no Keras either.
_TENSORFLOW_STARTS = {
    "serving": "from serving import quiet\nquiet.skip_keras(); quiet.start_tensorflow()\n",
    "export": "from export import quiet\nquiet.import_tensorflow()\n",
}


@pytest.mark.parametrize("package", sorted(_TENSORFLOW_STARTS))
def test_the_command_lines_import_tensorflow_without_keras(package):
  probe = (_TENSORFLOW_STARTS[package]
           + "import json, sys, tensorflow as tf\n"
           "print(json.dumps([tf.__version__, sorted({m.split('.')[0] for m in sys.modules}"
           " & {'keras', 'tf_keras', 'sklearn'})]))\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # conftest's
  done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  version, loaded = json.loads(done.stdout.splitlines()[-1])
  assert version.startswith("2.") and loaded == []
