"""The README's quickstart as a new user runs it, read from README.md itself
so the page cannot drift: the first `sh` block (`make setup`, `make export
serve`) in a fresh copy of the project, then the second block (the client
CLI over gRPC and REST) in another shell, then Ctrl-C.  What the README's
"What you see" shows must be what the commands print.

The copy holds exactly what a clone has (tracked and not-ignored files); it
shares this checkout's `.venv/` (`make setup` is what `.ci/run` already ran,
so make is told the venv is up to date) and starts with an empty training
cache, so the default model is trained and exported for real.  Ports are
free ones instead of 8500/8501, substituted into the commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.tiny_models import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
  assert match, f"README.md has no '## {title}' section"
  return match.group(1)


def code_blocks(section: str, language: str) -> list[list[str]]:
  """The commands of each ```language block: comments and blank lines dropped."""
  blocks = re.findall(rf"^```{language}\n(.*?)^```", section, re.M | re.S)
  return [[line.split("  #")[0].strip() for line in block.splitlines()
           if line.strip() and not line.lstrip().startswith("#")] for block in blocks]


def fresh_copy(dest: Path) -> Path:
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
  for name in filter(None, (f.decode() for f in files)):
    if (ROOT / name).is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, dest / name)
  (dest / ".venv").symlink_to(ROOT / ".venv")
  return dest


def wait_until_available(rest: str, model: str, proc: subprocess.Popen, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, "make exited early"
    try:
      with urllib.request.urlopen(f"http://{rest}/v1/models/{model}", timeout=5) as r:
        states = [v["state"] for v in json.loads(r.read())["model_version_status"]]
        if "AVAILABLE" in states:
          return
    except OSError:
      pass
    time.sleep(0.5)
  raise TimeoutError(f"{model} not AVAILABLE at {rest} after {timeout:.0f} s")


def test_readme_quickstart_blocks():
  make_block, client_block = code_blocks(readme_section("Quickstart"), "sh")
  assert make_block == ["make setup", "make export serve"]
  assert client_block[0] == "source .venv/bin/activate"
  assert all(c.startswith("python -m ") for c in client_block[1:])


@pytest.mark.timeout(1200)  # trains and exports the default model via make
def test_readme_quickstart_runs_as_written(tmp_path):
  make_block, client_block = code_blocks(readme_section("Quickstart"), "sh")
  project = fresh_copy(tmp_path / "project")
  env = dict(os.environ, VIT_DEFAULT_MODEL_CACHE=str(tmp_path / "cache"),
             TF_CPP_MIN_LOG_LEVEL="2")
  grpc_port, rest_port = free_port(), free_port()
  ports = {"127.0.0.1:8500": f"127.0.0.1:{grpc_port}", "127.0.0.1:8501": f"127.0.0.1:{rest_port}",
           "/tmp/": f"{tmp_path}/"}

  def as_run_here(command: str) -> str:
    for old, new in ports.items():
      command = command.replace(old, new)
    return command

  def make_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[0] == "make", command
    # The venv is this checkout's, already set up; the free ports replace 8500/8501.
    return ["make", "-o", ".venv/.installed", *argv[1:]]

  *setup, serve = make_block
  for command in setup:
    subprocess.run(make_argv(command), cwd=project, env=env, check=True, timeout=600,
                   capture_output=True)
  log_path = tmp_path / "serve.log"
  with open(log_path, "w") as log:
    server = subprocess.Popen(
        [*make_argv(serve), f"GRPC_PORT={grpc_port}", f"REST_PORT={rest_port}"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      started = time.monotonic()
      wait_until_available(f"127.0.0.1:{rest_port}", "vit_digits", server, timeout=900)
      ready_s = time.monotonic() - started
      # The second shell: the block as one bash script, each command's output
      # after a marker line.
      script = "set -e\n" + "".join(f"echo '### {i}'\n{as_run_here(c)}\n"
                                    for i, c in enumerate(client_block))
      shell = subprocess.run(["bash", "-c", script], cwd=project, env=env, text=True,
                             capture_output=True, timeout=600)
      assert shell.returncode == 0, shell.stderr[-3000:]
    finally:
      os.killpg(server.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
      try:
        server.wait(timeout=60)
      finally:
        if server.poll() is None:
          os.killpg(server.pid, signal.SIGKILL)
  outputs = re.split(r"^### \d+\n", shell.stdout, flags=re.M)[1:]
  assert len(outputs) == len(client_block)
  grpc_text, rest_json = outputs[-2], json.loads(outputs[-1])

  # The REST answers: the held-out digits (their names carry the true digit).
  assert len(rest_json) == 8
  correct = sum(int(re.search(r"digit(\d)_", Path(r["image"]).name)[1]) == r["top_k"][0]["class"]
                for r in rest_json)
  assert correct >= 7, rest_json
  # "What you see": the server's start-up lines and the gRPC predict output.
  seen = readme_section("What you see")
  serve_log = log_path.read_text()
  for line in re.findall(r"^\.\.\. (I serving\] .*)$", seen, re.M):
    assert as_run_here(line) in serve_log, line
  shown = re.findall(r"^```\n(.*?)^```", seen, re.M | re.S)[-1].splitlines()
  printed = grpc_text.splitlines()
  assert printed[:3] == [as_run_here(line) for line in shown[:3]]   # header, first image
  for want, got in zip(shown[3:], printed[3:]):                    # its top classes
    if want == "...":
      break
    assert want.split()[1:] == got.split()[1:], (want, got)
  assert "Traceback" not in serve_log, serve_log[-3000:]
  with pytest.raises(OSError):  # Ctrl-C released the ports
    urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/vit_digits", timeout=2)
  print(f"make export serve -> vit_digits AVAILABLE in {ready_s:.1f} s")
