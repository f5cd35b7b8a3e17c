"""The comparison logic of `make check-tfserving` (checks/tfserving_session.py).

The real check needs its side environment (another TensorFlow) and the JAX
exports; these tests need neither. The session script runs here on a tiny
SavedModel written with plain TensorFlow, whose outputs numpy computes: it
must pass on the true expectations and fail, with the reason in its table,
on a tampered one, on an output of the wrong shape, and on a warmup request
TF Serving would refuse at load time.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from checks import tfserving_plan as plan
from checks import tfserving_session as session
from export import repository

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "checks" / "tfserving_session.py"
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
TOLERANCE = 1e-4


def _save_model(version_dir: Path) -> None:
  """serving_default: images [b, 4] -> logits = images @ WEIGHTS, and
  doubled: x [b] -> y = 2x, each fed and fetched by tensor name."""
  module = tf.Module()
  module.w = tf.Variable(WEIGHTS)

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="images")])
  def serving_default(images: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"logits": tf.matmul(images, module.w)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
  def doubled(x: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"y": 2 * x}

  tf.saved_model.save(module, str(version_dir), signatures={
      "serving_default": serving_default.get_concrete_function(),
      "doubled": doubled.get_concrete_function()})


def _images(batch: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (batch, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
  version_dir = tmp_path_factory.mktemp("repo") / "toy" / "1"
  _save_model(version_dir)
  return version_dir


def _write_plan(tmp_path: Path, saved_model: Path, warmup: list[Any] | None = None
                ) -> tuple[Path, Path, list[Any], dict[str, Any]]:
  """A copy of the model with a warmup file and a manifest, and a plan whose
  expectations are the true outputs; returns (plan, version dir, requests,
  expectations)."""
  version_dir = tmp_path / "toy" / "1"
  shutil.copytree(saved_model, version_dir)
  extra = version_dir / "assets.extra"
  extra.mkdir(exist_ok=True)
  (version_dir / repository.MANIFEST).write_text(json.dumps({"name": "toy"}))
  warmup = warmup if warmup is not None else [
      plan.predict_log("toy", "serving_default", {"images": _images(2, 1)}),
      plan.predict_log("toy", "doubled", {"x": np.array([1, 2, 3], np.float32)})]
  with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
    for log in warmup:
      writer.write(log.SerializeToString())
  requests = [plan.predict_log("toy", "serving_default", {"images": _images(b, b)})
              for b in (0, 1, 5)]
  requests.append(plan.predict_log("toy", "doubled", {"x": np.array([-1.5], np.float32)}))
  expected = {
      "check": [{"logits": _images(b, b) @ WEIGHTS} for b in (0, 1, 5)]
               + [{"y": np.array([-3.0], np.float32)}],
      "warmup": [{"logits": _images(2, 1) @ WEIGHTS}, {"y": np.array([2, 4, 6], np.float32)}],
  }
  return _rewrite(tmp_path, version_dir, requests, expected), version_dir, requests, expected


def _rewrite(tmp_path: Path, version_dir: Path, requests: list[Any],
             expected: dict[str, Any]) -> Path:
  entry = plan.write_model(tmp_path / "work", name="toy", version_dir=version_dir,
                           manifest=version_dir / repository.MANIFEST, tolerance=TOLERANCE, requests=requests,
                           expected_check=expected["check"],
                           expected_warmup=expected["warmup"])
  return plan.write_plan(tmp_path, [entry])


def _run(plan_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
  status = session.main([str(plan_path)])
  return status, capsys.readouterr().out


def test_passes_on_the_true_outputs_and_records_the_serving_tensorflow(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
  plan_path, version_dir, _, _ = _write_plan(tmp_path, saved_model)
  status, out = _run(plan_path, capsys)
  assert status == 0, out
  assert "4/4 ok" in out and "FAIL" not in out
  rows = [line.split() for line in out.splitlines() if line.startswith("toy")]
  assert {(r[1], r[2]) for r in rows} == {("warmup", "serving_default"), ("warmup", "doubled"),
                                          ("check", "serving_default"), ("check", "doubled")}
  assert ["toy", "check", "serving_default", "3", "0,1,5"] == rows[2][:5]
  manifest = json.loads((version_dir / repository.MANIFEST).read_text())
  assert manifest["name"] == "toy"
  result = manifest["serving_checks"][tf.__version__]
  assert result["tensorflow"] == tf.__version__ and result["ok"] is True
  assert result["requests"] == {"warmup": 2, "check": 4}
  assert result["max_abs_diff"] <= TOLERANCE


@pytest.mark.parametrize("tamper, reason", [
    (lambda e: e["warmup"][0].update(logits=e["warmup"][0]["logits"] + 3e-4), "warmup"),
    (lambda e: e["check"][2].update(logits=e["check"][2]["logits"][:4]), "check"),
    (lambda e: e["check"][3].update(y=np.array([np.nan], np.float32)), "check"),
])
def test_fails_on_a_tampered_expectation(tmp_path: Path, saved_model: Path, tamper: Any,
                                         reason: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
  _, version_dir, requests, expected = _write_plan(tmp_path, saved_model)
  tamper(expected)
  plan_path = _rewrite(tmp_path, version_dir, requests, expected)
  status, out = _run(plan_path, capsys)
  assert status == 1, out
  failed = [line for line in out.splitlines() if line.endswith("FAIL")]
  assert len(failed) == 1 and failed[0].split()[1] == reason, out
  manifest = json.loads((version_dir / repository.MANIFEST).read_text())
  assert manifest["serving_checks"][tf.__version__]["ok"] is False


def test_tolerance_is_the_boundary() -> None:
  want = {"logits": np.zeros((2, 3), np.float32)}
  assert session.max_error({"logits": np.full((2, 3), 1e-4, np.float32)}, want) == \
      pytest.approx(1e-4)
  assert session.max_error({}, want) == float("inf")
  assert session.max_error({"logits": np.zeros((0, 3))}, {"logits": np.zeros((0, 3))}) == 0


def test_a_warmup_request_the_server_would_refuse_fails_the_load(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
  warmup = [plan.predict_log("toy", "no_such_signature", {"images": _images(1, 0)}),
            plan.predict_log("toy", "serving_default", {"pixels": _images(1, 0)})]
  plan_path, _, _, _ = _write_plan(tmp_path, saved_model, warmup=warmup)
  status, out = _run(plan_path, capsys)
  assert status == 1
  assert 'Serving signature name: "no_such_signature" not found' in out
  assert "do not match signature 'serving_default' inputs" in out


def test_a_version_that_does_not_load_is_a_failed_row(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
  plan_path, version_dir, _, _ = _write_plan(tmp_path, saved_model)
  (version_dir / "saved_model.pb").write_bytes(b"not a SavedModel")
  status, out = _run(plan_path, capsys)
  assert status == 1
  assert any(line.split()[1] == "load" and "FAIL" in line for line in out.splitlines()
             if line.startswith("toy"))


def test_runs_as_a_script(tmp_path: Path, saved_model: Path) -> None:
  # As make check-tfserving runs it: a file path, not a module of the project.
  plan_path, _, _, _ = _write_plan(tmp_path, saved_model)
  result = subprocess.run([sys.executable, str(SCRIPT), "--expect-tensorflow", tf.__version__,
                           str(plan_path)], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "4/4 ok" in result.stdout


def test_refuses_another_tensorflow_than_expected(
    tmp_path: Path, saved_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
  plan_path, _, _, _ = _write_plan(tmp_path, saved_model)
  assert session.main(["--expect-tensorflow", "0.0.1", str(plan_path)]) == 2
  assert "expected 0.0.1" in capsys.readouterr().err


def test_the_side_script_imports_no_project_code() -> None:
  # It runs in the serving release's TensorFlow, where the JAX code cannot.
  tree = ast.parse(SCRIPT.read_text())
  modules = {alias.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names}
  modules |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
  assert modules - set(sys.stdlib_module_names) == {"numpy", "tensorflow",
                                                    "tensorflow_serving"}


def test_the_xla_flag_check_fails_for_a_graph_without_xla(tmp_path: Path,
                                                         saved_model: Path) -> None:
  # --check-xla-flag expects the export's warmup to fail once XLA compilation
  # is disabled (as tensorflow_model_server without the XLA flags); this toy
  # graph has no XLA, so the check must report it. A subprocess: the switch
  # is process-wide. (make check-tfserving runs it on a real jax2tf export.)
  plan_path, _, _, _ = _write_plan(tmp_path, saved_model)
  result = subprocess.run([sys.executable, str(SCRIPT), "--check-xla-flag", str(plan_path)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  assert "4/4 ok" in result.stdout
  assert "warmup ran: the export does not need XLA" in result.stdout
