"""`python -m serving` as a child process, for scripts, benchmarks and tests.

`ServerProcess` starts the embedded server as a user would (its own
interpreter, flags on the command line) and waits for the log lines in which
it announces its ports, in TF Serving's wording, so a caller can use the
ports it asked for with `free_port` or the ones the server chose. Nothing
here imports TensorFlow.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
_GRPC_LINE = re.compile(r"Running gRPC ModelServer at (\S+):(\d+)")
_REST_LINE = re.compile(r"Exporting HTTP/REST API at:(\S+):(\d+)")


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ServerProcess:
  """`python -m serving ARGS` in a subprocess; waits for its ports.

  Reads the server's log on a thread (so a chatty server never blocks on a
  full pipe) and keeps it for error messages and assertions.
  """

  def __init__(self, args: Sequence[str], *, cwd: str | os.PathLike = ROOT,
               timeout: float = 90.0, wait: bool = True):
    """Starts the server; with `wait` (the default) returns once it serves,
    else at once (then `wait_until_serving` gives the addresses)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT))
    self.args = list(args)
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "serving", *self.args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._changed = threading.Condition()
    threading.Thread(target=self._read, daemon=True).start()
    self.grpc_address: str | None = None
    self.rest_address: str | None = None
    if wait:
      self.wait_until_serving(timeout)

  def wait_until_serving(self, timeout: float = 90.0) -> None:
    """Waits for the lines announcing the ports and sets the addresses."""
    self.grpc_address, self.rest_address = self._wait(timeout)

  def _read(self) -> None:
    assert self.proc.stdout is not None
    for line in self.proc.stdout:
      with self._changed:
        self.lines.append(line.rstrip("\n"))
        self._changed.notify_all()
    with self._changed:
      self._changed.notify_all()

  @property
  def log(self) -> str:
    with self._changed:
      return "\n".join(self.lines)

  def _wait(self, timeout: float) -> tuple[str | None, str | None]:
    want_grpc = _flag(self.args, "port", "8500") != "0"
    want_rest = _flag(self.args, "rest_api_port", "0") != "0"
    deadline = time.monotonic() + timeout
    with self._changed:
      while True:
        text = "\n".join(self.lines)
        grpc, rest = _GRPC_LINE.search(text), _REST_LINE.search(text)
        if (grpc or not want_grpc) and (rest or not want_rest):
          return (f"{grpc[1]}:{grpc[2]}" if grpc else None,
                  f"{rest[1]}:{rest[2]}" if rest else None)
        if self.proc.poll() is not None:
          raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
        left = deadline - time.monotonic()
        if left <= 0:
          self.proc.kill()
          self.proc.wait(timeout=30)
          raise RuntimeError(f"server did not start in {timeout:.0f} s:\n{text}")
        self._changed.wait(min(left, 0.5))

  def wait_for_log(self, pattern: str, timeout: float = 30.0) -> str:
    """The first log line matching regex `pattern`, waiting up to `timeout`."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    with self._changed:
      while True:
        for line in self.lines:
          if regex.search(line):
            return line
        left = deadline - time.monotonic()
        if left <= 0:
          raise AssertionError(f"no log line matches {pattern!r}:\n{self.log}")
        self._changed.wait(min(left, 0.5))

  def stop(self, timeout: float = 30.0) -> None:
    """SIGTERM, and a clean exit: status 0 within `timeout` seconds. A server
    that hangs is killed and one that exits otherwise (or had exited) is an
    error, with its log, so no caller mistakes a crash for a stop."""
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(timeout=30)
        raise RuntimeError(f"server did not exit within {timeout:.0f} s of SIGTERM:\n"
                           f"{self.log}") from None
    if self.proc.returncode != 0:
      raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")


def _flag(args: Sequence[str], name: str, default: str) -> str:
  value = default
  for i, arg in enumerate(args):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(args):
      value = args[i + 1]
  return value
