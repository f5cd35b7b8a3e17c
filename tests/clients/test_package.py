"""The client as a service installs it: the wheel without extras, on other CPythons.

A wheel is built from a copy of the sources (so the worktree gets no build/
or egg-info), installed into fresh venvs made by pyenv's CPython 3.10 and 3.13 (the oldest
and newest the client claims; the build machines' image has them, elsewhere
`pyenv install 3.10 3.13`; without them these tests fail, they do not fall
back to this interpreter), and used from outside the repository against the
embedded server: `import clients`, `python -m clients predict`, the `vit-client`
script. TensorFlow, JAX and Flax must not have come with it. pip's cache keeps
the repeated installs to a few seconds (the client's dependencies are small).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.tiny_models import ROOT, ServerProcess, free_port, write_tf2_model

HEAVY = ("tensorflow", "jax", "flax")


# The oldest CPython pyproject's requires-python admits, and the newest the
# build machines' pyenv has.
PYTHONS = ("3.10", "3.13")


def _interpreter(version: str) -> str:
  """pyenv's newest CPython `version`.x; fails (never substitutes) without it."""
  root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
  found = sorted(root.glob(f"{version}.*/bin/python"),
                 key=lambda p: int(p.parts[-3].split(".")[2].split("-")[0] or 0))
  assert found, (f"no CPython {version} under {root}: `pyenv install {version}` "
                 "(this test must not fall back to another interpreter)")
  return str(found[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  source = tmp_path_factory.mktemp("source")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  for package in ("clients", "contract", "serving", "export", "ops"):
    shutil.copytree(ROOT / package, source / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  out = tmp_path_factory.mktemp("dist")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", str(out), str(source)],
                 check=True, capture_output=True, text=True, timeout=300)
  return next(out.glob("vit_serving-*.whl"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  base = tmp_path_factory.mktemp("models") / "tiny"
  write_tf2_model(base / "1")
  process = ServerProcess([f"--port={free_port()}", f"--rest_api_port={free_port()}",
                           "--model_name=tiny", f"--model_base_path={base}"])
  yield process
  process.stop()


def test_wheel_ships_protos_data_and_console_scripts(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    scripts = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
  assert {"contract/tf_serving_protos.binpb", "export/data/imagenet2012_labels.txt",
          "ops/tune/__main__.py"} <= names
  for script in ("vit-client = clients.__main__:main", "vit-serving = serving.__main__:run",
                 "vit-export = export.__main__:run", "vit-rollout = ops.rollout:main",
                 "vit-tune = ops.tune.__main__:main"):
    assert script in scripts
  base = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
          if line.startswith("Requires-Dist:") and "extra ==" not in line]
  assert sorted(r.split(">")[0] for r in base) == ["grpcio", "numpy", "pillow", "protobuf",
                                                  "tqdm"]
  assert "Requires-Python: >=3.10" in metadata


@pytest.fixture(params=PYTHONS)
def python(request: pytest.FixtureRequest) -> str:
  """First among the test's fixtures, so a missing one fails before any build."""
  return _interpreter(request.param)


@pytest.mark.timeout(900)  # a venv and a pip install (from the index) per interpreter
def test_client_alone_from_the_wheel_predicts_on_another_python(python, wheel, server, tmp_path):
  version = ".".join(Path(python).parts[-3].split(".")[:2])
  venv = tmp_path / "venv"
  subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
  bin_dir = venv / "bin"
  install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                            str(wheel)], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  image = tmp_path / "photo.png"
  pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(image)

  def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)

  probe = run(str(bin_dir / "python"), "-c",
              "import importlib.util, sys, clients; print(sys.version_info[:2]); "
              "print(clients.__file__); "
              f"print([m for m in {HEAVY!r} if importlib.util.find_spec(m)])")
  assert probe.returncode == 0, probe.stderr
  seen, location, heavy = probe.stdout.splitlines()
  assert seen == str(tuple(int(v) for v in version.split("."))) and seen != str(sys.version_info[:2])
  assert str(venv) in location and heavy == "[]"
  for command in ([str(bin_dir / "python"), "-m", "clients"], [str(bin_dir / "vit-client")]):
    done = run(*command, "predict", "--server", server.grpc_address, "--model", "tiny",
               "--top-k", "2", str(image))
    assert done.returncode == 0, done.stderr
    assert "tiny version 1 via grpc" in done.stdout and str(image) in done.stdout
  done = run(str(bin_dir / "python"), "-m", "clients", "predict", "--rest", "--server",
             server.rest_address, "--model", "tiny", "--version", "1", str(image))
  assert done.returncode == 0 and "via http://" in done.stdout, done.stderr
