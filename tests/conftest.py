"""Shared fixtures: the reference checkpoints copied from the original code's
outputs (see tests/data/REFERENCE.md). Also the CI's rule on skips:
`--strict-skips` (set by .ci/run) turns every skip whose reason is not in
ALLOWED_SKIPS into a failure, so a missing tool cannot leave a run green.
And the order of a run: one JAX compilation cache for it
(`_share_jax_compilations`), and the long modules first (`LONG_MODULES`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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


# The modules that take a minute or so each on 2 cores (`make test`'s
# durations), started before all others, in the run's random order among
# themselves: `make test` hands whole modules to three workers in collection
# order, and a long module drawn last kept one worker busy alone for the
# run's last ~90 s. The order inside each module, and among the other
# modules, stays random.
LONG_MODULES = (
    "tests/test_quickstart.py",
    "tests/export/test_exporter.py",
    "tests/export/test_finetune.py",
    "tests/export/test_default_model.py",
    "tests/export/test_models.py",
    "tests/serving/test_lifecycle.py",
    "tests/serving/test_ab_switch.py",
    "tests/serving/test_rollout.py",
    "tests/ops/test_tune.py",
    "tests/clients/test_package.py",
    "tests/clients/test_server.py",
)


@pytest.hookimpl(trylast=True)  # after pytest-random-order has shuffled
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONG_MODULES)


def pytest_configure(config: pytest.Config) -> None:
  _share_jax_compilations(config)


def _tensorflow_without_keras() -> None:
  """The test processes import TensorFlow as `python -m serving` and the
  export CLIs do (serving/quiet.py, export/quiet.py): without Keras 3, which
  its __init__ would import eagerly; 1.6-2.1 s less CPU for each worker and
  each child process. Fine-tuning imports Keras itself, as in production."""
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


_tensorflow_without_keras()   # before any test module imports TensorFlow


def _share_jax_compilations(config: pytest.Config) -> None:
  """Points JAX's persistent compilation cache at one new directory for this
  run, shared by the xdist workers and every process a test starts (they
  inherit the environment): the default model's training step, the same
  for every run of a recipe, compiles in ~5 s, and several tests and the
  quickstart's `make export` train the same recipes in different processes.
  The cache is empty at the start of each run and removed at its end, so
  no run depends on an earlier one. Set on the controller only, before it
  starts the workers; a JAX_COMPILATION_CACHE_DIR given by the user wins."""
  if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  directory = tempfile.mkdtemp(prefix="vit-serving-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
  # Every compilation, not only those over 1 s: the accuracy and
  # verification functions recompile per call too.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


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


@pytest.fixture(scope="session")
def _vit_a_token_export(tmp_path_factory, reference_manifest) -> Path:
  """tests/data/vit_a_token.npz exported once per session as model "vit",
  version 1 (32 px, labels class_0..9, one warmup batch size): the seconds
  of an export are paid once for every module that serves a real export.
  Use `vit_a_token_version`, which copies it."""
  from export.exporter import export_checkpoint
  return export_checkpoint(str(DATA / "vit_a_token.npz"), "vit",
                           tmp_path_factory.mktemp("shared_export") / "models",
                           config=reference_manifest["vit_a_token"]["config"], version=1,
                           model_config_file=None, warmup_batch_sizes=(1,))


@pytest.fixture(scope="session")
def vit_a_token_version(_vit_a_token_export):
  """`copy(target)`: the shared export's version directory copied to
  `target` (a module may change its copy; nobody changes the original)."""
  def copy(target: Path) -> Path:
    shutil.copytree(_vit_a_token_export, target)
    return target
  return copy
