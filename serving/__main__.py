"""`python -m serving`: the embedded drop-in for tensorflow_model_server.

As TF Serving's main.cc, this is the command line only: the flags, the log
format, and the signals; serving/server.py builds, starts and stops the
server.  A config that does not parse, a model that fails to load, or a port
that is in use stops it with "Failed to start server. Error: ..." and exit
status 1, so a crash loop or a failed CI start looks the same on both
servers.  SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading


def main(argv: list[str]) -> int:
  from serving import flags
  unknown: list[str] = []
  values = flags.parse_or_exit(argv, unknown)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s.%(msecs)03d: %(levelname).1s serving] %(message)s",
                      datefmt="%Y-%m-%d %H:%M:%S")
  log = logging.getLogger("serving")
  # TF Serving logs each file-system poll at VLOG(1) in
  # file_system_storage_path_source.cc; the same TF_CPP_VMODULE setting turns
  # on this server's line per finished poll (repository and config file).
  if re.search(r"(^|,)file_system_storage_path_source=[1-9]",
               os.environ.get("TF_CPP_VMODULE", "")):
    logging.getLogger("serving.polls").setLevel(logging.DEBUG)
  if values["version"]:
    from importlib.metadata import version
    print(f"TensorFlow ModelServer (embedded): {version('tensorflow-serving-api')}")
    return 0
  for arg in unknown:
    log.warning("Unknown command line flag or argument %r: ignored, as "
                "tensorflow_model_server ignores it", arg)
  for name in flags.ignored(values):
    log.warning("--%s is accepted for compatibility but has no effect here", name)
  from serving import quiet
  from serving.server import Server, ServerOptions
  quiet.skip_keras()
  server = Server(ServerOptions.from_flags(values))
  stop = threading.Event()

  def handle_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, lambda *_: stop.set())

  try:
    server.build_and_start(before_ports=handle_signals)
  except Exception as e:  # noqa: BLE001  (report start-up failures the way TF Serving does)
    from serving.errors import ServingError
    text = str(e) if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
    log.error("Failed to start server. Error: %s", text)
    return 1
  # Server::WaitForTermination's role, woken each second: the kernel may
  # hand SIGTERM to any of gRPC's or TensorFlow's threads, and Python runs the
  # handler only once the main thread runs bytecode again, which an untimed
  # wait never does.
  while not stop.wait(timeout=1.0):
    pass
  log.info("Shutting down")
  server.stop()
  return 0


def run() -> int:
  """The `vit-serving` console script: `python -m serving` with this process's arguments."""
  return main(sys.argv[1:])


if __name__ == "__main__":
  sys.exit(run())
