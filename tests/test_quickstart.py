"""The quickstart as a new user runs it: `make export serve` in a fresh copy
of the project, then the client CLI classifies held-out digits over gRPC and
REST, then Ctrl-C stops the server.

The copy holds exactly what a clone has (tracked and not-ignored files); it
shares this checkout's `.venv/` (`make setup` is what `.ci/run` already ran)
and starts with an empty training cache, so the default model is trained and
exported for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.tiny_models import free_port

ROOT = Path(__file__).resolve().parents[1]


def fresh_copy(dest: Path) -> Path:
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
  for name in filter(None, (f.decode() for f in files)):
    if (ROOT / name).is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, dest / name)
  (dest / ".venv").symlink_to(ROOT / ".venv")
  return dest


def run_cli(project: Path, *args: str) -> str:
  result = subprocess.run([sys.executable, "-m", "clients", *args], cwd=project,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return result.stdout


def wait_until_available(rest: str, model: str, proc: subprocess.Popen, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, "make serve exited early"
    try:
      with urllib.request.urlopen(f"http://{rest}/v1/models/{model}", timeout=5) as r:
        states = [v["state"] for v in json.loads(r.read())["model_version_status"]]
        if "AVAILABLE" in states:
          return
    except OSError:
      pass
    time.sleep(0.5)
  raise TimeoutError(f"{model} not AVAILABLE at {rest} after {timeout:.0f} s")


@pytest.mark.timeout(1200)  # trains and exports the default model via make
def test_make_export_serve_classifies_held_out_digits(tmp_path):
  project = fresh_copy(tmp_path / "project")
  env = dict(os.environ, VIT_DEFAULT_MODEL_CACHE=str(tmp_path / "cache"),
             TF_CPP_MIN_LOG_LEVEL="2")
  make = ["make", "-o", ".venv/.installed"]  # .venv/ is this checkout's, already set up

  started = time.monotonic()
  subprocess.run([*make, "export"], cwd=project, env=env, check=True, timeout=600,
                 capture_output=True)
  export_s = time.monotonic() - started
  assert sorted(p.name for p in (project / "models" / "vit_digits").iterdir()) == ["1", "2"]

  images = tmp_path / "digits"
  subprocess.run([sys.executable, "-m", "export.default_model", "--write-images",
                  str(images), "--count", "100"], cwd=project, env=env, check=True,
                 capture_output=True, timeout=300)

  grpc_port, rest_port = free_port(), free_port()
  log = open(tmp_path / "serve.log", "w")
  server = subprocess.Popen([*make, "serve", f"GRPC_PORT={grpc_port}", f"REST_PORT={rest_port}"],
                            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  try:
    started = time.monotonic()
    wait_until_available(f"127.0.0.1:{rest_port}", "vit_digits", server, timeout=180)
    available_s = time.monotonic() - started
    for transport, address in (("grpc", f"127.0.0.1:{grpc_port}"),
                               ("rest", f"127.0.0.1:{rest_port}")):
      extra = ["--rest"] if transport == "rest" else []
      out = json.loads(run_cli(project, "predict", "--server", address, "--model",
                               "vit_digits", "--json", *extra, str(images)))
      assert len(out) == 100
      correct = sum(int(re.search(r"digit(\d)_", Path(r["image"]).name)[1])
                    == r["top_k"][0]["class"] for r in out)
      assert correct / len(out) >= 0.95, (transport, correct)
      assert all(r["top_k"][0]["label"] == str(r["top_k"][0]["class"]) for r in out)
  finally:
    os.killpg(server.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
    try:
      server.wait(timeout=60)
    finally:
      if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
      log.close()
  serve_log = (tmp_path / "serve.log").read_text()
  assert "Traceback" not in serve_log, serve_log[-3000:]
  with pytest.raises(OSError):  # the ports are released
    urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/vit_digits", timeout=2)
  print(f"make export {export_s:.1f} s; make serve -> vit_digits AVAILABLE {available_s:.1f} s")
