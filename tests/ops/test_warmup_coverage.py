"""The warmup coverage check (contract/warmup.py): which batch sizes a
version's warmup file compiles, which a batching configuration runs, the
shipped configurations against the exports documented for them, and the
embedded server's WARNING when a served version leaves a size cold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from contract import warmup
from ops.tune import search
from tests.support import tiny_models
from tests.support.paths import ROOT

CONFIG = ROOT / "deploy" / "config"


def _write_warmup(path: Path, requests: list[tuple[str, int]]) -> None:
  """A warmup file with one Predict per (signature, batch size), written by
  TensorFlow's own TFRecord writer and messages."""
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
  (path / "assets.extra").mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path / warmup.FILE)) as writer:
    for signature, batch in requests:
      request = predict_pb2.PredictRequest()
      request.model_spec.signature_name = signature
      request.inputs["images"].CopyFrom(tf.make_tensor_proto(
          np.zeros((batch, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, 3), np.float32)))
      writer.write(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def test_warmed_batch_sizes_reads_tf_servings_file(tmp_path):
  _write_warmup(tmp_path, [("serving_default", 1), ("serving_default", 8), ("", 2),
                           ("predict_uint8", 1)])
  assert warmup.warmed_batch_sizes(tmp_path) == {"serving_default": {1, 2, 8},
                                                 "predict_uint8": {1}}
  assert warmup.warmed_batch_sizes(tmp_path / "missing") == {}


def test_missing_sizes_of_a_configuration():
  warmed = {"serving_default": {1, 2, 4, 8}}
  assert warmup.missing([1, 2, 4, 8, 16, 32], 32, warmed) == [16, 32]
  assert warmup.missing([1, 2, 4, 8], 8, warmed) == []
  # no allowed_batch_sizes: batches run at every size up to max_batch_size
  assert warmup.missing([], 10, warmed) == [3, 5, 6, 7, 9, 10]
  assert warmup.missing([1, 2], 2, {"predict_uint8": {1, 2}}) == [1, 2]


def _documented_gpu_export_sizes(text: str) -> list[int]:
  found = re.findall(r"WARMUP_BATCH_SIZES=([\d,]+)", text)
  assert found, "no documented GPU export command"
  assert len(set(found)) == 1, found
  return [int(b) for b in found[0].split(",")]


def test_shipped_configurations_are_covered_by_the_exports_made_for_them():
  from export.__main__ import parse_args
  default = parse_args(["--checkpoint", "B/16", "--name", "m", "--repo", "r"]).warmup_batch_sizes
  cpu = search.read_batching_file(CONFIG / "batching_parameters.config")
  assert warmup.missing(cpu.allowed_batch_sizes, cpu.max_batch_size,
                        {"serving_default": set(default)}) == []
  gpu_text = (CONFIG / "batching_parameters.gpu.config").read_text()
  gpu = search.read_batching_file(CONFIG / "batching_parameters.gpu.config")
  documented = _documented_gpu_export_sizes(gpu_text)
  assert documented == _documented_gpu_export_sizes((ROOT / "docs" / "deployment.md").read_text())
  assert warmup.missing(gpu.allowed_batch_sizes, gpu.max_batch_size,
                        {"serving_default": set(documented)}) == []
  # ... and the default export alone would leave the GPU sizes above 8 cold
  assert warmup.missing(gpu.allowed_batch_sizes, gpu.max_batch_size,
                        {"serving_default": set(default)}) == [16, 32]


def test_gpu_compose_file_and_overlay_use_the_gpu_batching_file():
  compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
  flags = compose["services"]["tfserving"]["command"]
  assert "--batching_parameters_file=/srv/vit/deploy/config/batching_parameters.gpu.config" \
      in flags
  overlay = yaml.safe_load((ROOT / "deploy" / "overlays" / "gpu" / "deployment.yaml").read_text())
  env = overlay["spec"]["template"]["spec"]["containers"][0]["env"]
  assert {"name": "BATCHING_PARAMETERS_FILE",
          "value": "/srv/vit/deploy/config/batching_parameters.gpu.config"} in env


def test_embedded_server_warns_about_cold_batch_sizes(tmp_path):
  tiny_models.write_tf2_model(tmp_path / "cold" / "1")
  _write_warmup(tmp_path / "cold" / "1", [("serving_default", 1)])
  tiny_models.write_tf2_model(tmp_path / "warm" / "1")
  _write_warmup(tmp_path / "warm" / "1", [("serving_default", 1), ("serving_default", 2),
                                          ("serving_default", 4)])
  # export.rewarm publishes a copy of "cold" version 1 that warms 1, 2 and 4
  tiny_models.write_tf2_model(tmp_path / "rewarmed" / "1")
  _write_warmup(tmp_path / "rewarmed" / "1", [("serving_default", 1)])
  done = subprocess.run([sys.executable, "-m", "export.rewarm", str(tmp_path / "rewarmed" / "1"),
                         "--batch-sizes", "1,2,4"], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == str(tmp_path / "rewarmed" / "2")
  assert warmup.warmed_batch_sizes(tmp_path / "rewarmed" / "2") == {"serving_default": {1, 2, 4}}
  assert warmup.warmed_batch_sizes(tmp_path / "rewarmed" / "1") == {"serving_default": {1}}
  assert (tmp_path / "rewarmed" / "2" / "saved_model.pb").stat().st_ino == \
      (tmp_path / "rewarmed" / "1" / "saved_model.pb").stat().st_ino     # hard links
  (tmp_path / "models.config").write_text("model_config_list {\n" + "".join(
      f'  config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}\n'
      for n in ("cold", "warm", "rewarmed")) + "}\n")
  (tmp_path / "batching.config").write_text(search.make(4, 0, 1, 4).text_proto())
  server = tiny_models.ServerProcess([
      f"--port={tiny_models.free_port()}", f"--model_config_file={tmp_path / 'models.config'}",
      "--enable_batching=true", f"--batching_parameters_file={tmp_path / 'batching.config'}"])
  try:
    line = server.wait_for_log(r"W serving\].*model cold")   # a WARNING line
    assert "at batch sizes 2,4 that" in line
    assert "model warm" not in server.log and "model rewarmed" not in server.log
    # the new version loaded, its tiled batch-2 and batch-4 requests replayed
    server.wait_for_log(r"rewarmed/2\. Number of warmup records read: 3")
  finally:
    server.stop()


def test_make_export_passes_the_documented_gpu_warmup_sizes():
  """`make export WARMUP_BATCH_SIZES=...` (the GPU command documented beside
  the GPU batching file) reaches the exporter's flag, so the GPU sizes get
  warmed; and the Makefile's default is the exporter's."""
  from export.default_model import parse_args

  def exported_sizes(*overrides: str) -> tuple[int, ...]:
    dry = subprocess.run(["make", "-n", "-o", "setup", "export", *overrides], cwd=ROOT,
                         text=True, capture_output=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    (line,) = [ln for ln in dry.stdout.replace("\\\n", " ").splitlines()
               if " -m export.default_model " in ln]
    argv = line.split()
    return parse_args(argv[argv.index("export.default_model") + 1:]).warmup_batch_sizes

  documented = _documented_gpu_export_sizes(
      (CONFIG / "batching_parameters.gpu.config").read_text())
  assert list(exported_sizes(f"WARMUP_BATCH_SIZES={','.join(map(str, documented))}")) == \
      documented
  assert exported_sizes() == parse_args(["--repo", "models"]).warmup_batch_sizes
