"""Every command line answers --help with its own text only, and before it
imports TensorFlow or JAX (which is what makes help instant; how instant is
measured by benchmarks/bench_cli.py, not asserted here).

All of them keep it so the same way (docs/design.md, "Package boundaries"):
the module `python -m` runs imports nothing heavy at its top, and its `main`
parses the arguments before it imports the modules that do the work. The
second test holds every command line to that: importing its module, without
running it, loads no heavy module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.logs import FOREIGN
from tests.support.paths import ROOT

COMMANDS = ("export", "export.zoo", "export.finetune", "export.default_model", "serving",
            "ops.rollout", "clients", "benchmarks", "ops.tune",
            "export.rewarm")
HEAVY = ("tensorflow", "jax", "flax")

# Runs `python -m MODULE --help` in this process's interpreter and reports
# which heavy modules it had imported when help exited.
_PROBE = """
import json, runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
  code = e.code
else:
  code = None
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


@pytest.mark.parametrize("module", COMMANDS)
def test_help_is_the_programs_own_and_imports_nothing_heavy(module):
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
  done = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  *help_lines, report = done.stdout.rstrip("\n").split("\n")
  result = json.loads(report)
  assert result["code"] in (0, None), done.stderr
  assert result["heavy"] == [], f"{module} --help imported {result['heavy']}"
  assert "usage:" in "\n".join(help_lines)
  assert not FOREIGN.search(done.stdout + done.stderr), done.stderr
  assert done.stderr == ""


# Imports the module a `python -m` command runs, without running it, and
# reports which heavy modules that loaded.
_IMPORT_PROBE = """
import importlib, importlib.util, json, sys
spec = importlib.util.find_spec(sys.argv[1])
module = sys.argv[1] + (".__main__" if spec.submodule_search_locations is not None else "")
importlib.import_module(module)
print(json.dumps([m for m in %r if m in sys.modules]))
""" % (HEAVY,)


@pytest.mark.parametrize("module", COMMANDS)
def test_the_command_line_module_imports_nothing_heavy(module):
  done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, module], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.splitlines()[-1]) == [], \
      f"importing {module}'s command line imports a heavy module before parsing"
