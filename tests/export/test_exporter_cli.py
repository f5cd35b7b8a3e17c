"""`python -m export` end to end in subprocesses, and an export killed with
SIGKILL in the middle of writing: it publishes nothing, and the next export
(the CLI run) cleans up the temporary directory it left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from contract import warmup
from export import repository
from tests.support.logs import FOREIGN

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_killed_export_then_cli_export(tmp_path, data_dir, reference_manifest):
  (tmp_path / "vit.json").write_text(json.dumps(reference_manifest["vit_a_token"]["config"]))
  (tmp_path / "labels.txt").write_text("".join(f"label {i}\n" for i in range(10)))
  checkpoint = str(data_dir / "vit_a_token.npz")

  # Killed after the SavedModel is written into the temporary directory, as
  # the warmup file is being written: no version, no models.config.
  killed = run(["-c", textwrap.dedent(f"""
      import os, signal
      from export import exporter, warmup
      def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
      warmup.write = die
      exporter.export_checkpoint({checkpoint!r}, "vit", "models", config="vit.json")
      """)], cwd=tmp_path)
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  model_dir = tmp_path / "models" / "vit"
  leftovers = [p.name for p in model_dir.iterdir()]
  assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
  assert (model_dir / leftovers[0] / "saved_model.pb").exists()
  assert not (tmp_path / "models.config").exists()

  cli = run(["-m", "export", "--checkpoint", checkpoint, "--name", "vit", "--repo", "models",
             "--config", "vit.json", "--labels", "labels.txt", "--warmup-batch-sizes", "3,1"],
            cwd=tmp_path)
  assert cli.returncode == 0, cli.stderr
  assert cli.stdout.strip() == "models/vit/1"
  assert "verify" in cli.stderr and "removed" in cli.stderr
  assert not FOREIGN.search(cli.stderr), cli.stderr  # export/quiet.py
  assert [p.name for p in model_dir.iterdir()] == ["1"]
  version = model_dir / "1"
  assert (version / "assets" / "labels.txt").read_text().splitlines()[3] == "label 3"
  assert warmup.warmed_batch_sizes(version)["serving_default"] == {1, 3}
  manifest = json.loads((version / repository.MANIFEST).read_text())
  assert manifest["labels"]["from"] == "labels.txt"
  config = text_format.Parse((tmp_path / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  (entry,) = config.model_config_list.config
  assert (entry.name, entry.base_path, entry.model_platform) == ("vit", "models/vit",
                                                                 "tensorflow")


def test_cli_reports_errors_without_publishing(tmp_path, data_dir):
  result = run(["-m", "export", "--checkpoint", str(tmp_path / "missing.npz"), "--name", "m",
                "--repo", "models", "--model", "B/16"], cwd=tmp_path)
  assert result.returncode == 2
  assert "missing.npz: no such file" in result.stderr and "Traceback" not in result.stderr
  assert list(tmp_path.iterdir()) == []

  result = run(["-m", "export", "--checkpoint", "x.npz", "--name", "m", "--repo", "models",
                "--model", "B/16", "--config", "c.json"], cwd=tmp_path)
  assert result.returncode == 2 and "not allowed with" in result.stderr
