"""`python -m serving`: the embedded drop-in for tensorflow_model_server.

Start-up follows TF Serving (server.cc, main.cc): read the flags and config
files, load the models and wait until every one is AVAILABLE (a model whose
base path does not exist yet is waited for), and only then open the ports and
print them in TF Serving's log lines ("Running gRPC ModelServer at ...",
"Exporting HTTP/REST API at:...") so scripts and tests can wait for them.  A
config that does not parse, a model that fails to load, or a port that is in
use stops it with "Failed to start server. Error: ..." and exit status 1, so a
crash loop or a failed CI start looks the same on both servers.
SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from serving.model_manager import ModelManager


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
  try:
    # TLS first: a config that cannot be served fails before TensorFlow loads.
    return _serve(values, log, *_tls(values, log))
  except Exception as e:  # noqa: BLE001  (report start-up failures the way TF Serving does)
    from serving.errors import ServingError
    text = str(e) if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
    log.error("Failed to start server. Error: %s", text)
    return 1


def _configure_tensorflow(values: dict) -> None:
  import tensorflow as tf
  both = values["tensorflow_session_parallelism"]
  intra = values["tensorflow_intra_op_parallelism"] or both
  inter = values["tensorflow_inter_op_parallelism"] or both
  if intra:
    tf.config.threading.set_intra_op_parallelism_threads(intra)
  if inter:
    tf.config.threading.set_inter_op_parallelism_threads(inter)
  if values["xla_cpu_compilation_enabled"]:
    tf.config.optimizer.set_jit(True)


def _serve(values: dict, log: logging.Logger, grpc_credentials: Any, rest_ssl: Any) -> int:
  import functools
  from serving import quiet
  quiet.start_tensorflow()  # first: nothing may import TensorFlow before it
  from serving import config, grpc_service, inference
  from serving.core import Core
  from serving.metrics import Metrics
  from serving.model_manager import LoadOptions, ModelManager
  from serving.rest import RestServer
  from serving.servable import Servable

  config_file = values["model_config_file"]
  poller = _ConfigPoller(config_file, log)     # the text start-up reads is "applied"
  if config_file:
    server_config = config.read_model_server_config(config_file)
  elif values["model_base_path"]:
    server_config = config.single_model_config(values["model_name"], values["model_base_path"])
  else:
    raise ValueError("Both server_model_config_file and model_base_path are empty! "
                     "(give --model_config_file, or --model_name and --model_base_path)")
  batching = config.read_batching_options(values["batching_parameters_file"]) \
      if values["enable_batching"] else None
  prometheus_path = config.read_prometheus_path(values["monitoring_config_file"])
  _configure_tensorflow(values)

  metrics = Metrics()
  manager = ModelManager(LoadOptions(
      tags=tuple(t for t in values["saved_model_tags"].split(",") if t),
      warmup=values["enable_model_warmup"],
      warmup_iterations=max(1, values["num_request_iterations_for_warmup"]),
      max_load_retries=values["max_num_load_retries"],
      load_retry_interval_s=values["load_retry_interval_micros"] / 1e6,
      allow_labels_for_unavailable=values["allow_version_labels_for_unavailable_models"]),
      loader=functools.partial(
          Servable.load,
          read_batching_params=bool(batching and values["enable_per_model_batching_parameters"])),
      metrics=metrics)
  # The core replays warmup records, so it exists before the first load.
  core = Core(manager, metrics, batching=batching,
              per_model_batching=values["enable_per_model_batching_parameters"],
              options=inference.Options(
                  method_name_check=values["enable_signature_method_name_check"],
                  tensor_content=values["enable_serialization_as_tensor_content"]),
              threads=values["grpc_max_threads"])
  manager.apply_config(server_config)     # blocks until AVAILABLE, or fails start-up
  fs_poll = values["file_system_poll_wait_seconds"]
  config_poll = values["model_config_file_poll_wait_seconds"] if config_file else 0
  manager.start_polling(fs_poll, lambda: poller.step(manager), config_poll)
  # Before the ports are announced, so a SIGTERM as soon as they are is a
  # clean stop (exit 0); until then (loading models) it ends the process.
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())

  bind = values["bind"]
  grpc_server = None
  if values["port"] or values["grpc_socket_path"]:
    grpc_server, port = grpc_service.start(
        core, bind=bind, port=values["port"], socket_path=values["grpc_socket_path"],
        channel_arguments=values["grpc_channel_arguments"],
        health_service=values["enable_grpc_healthcheck_service"],
        credentials=grpc_credentials)
    if port:
      log.info("Running gRPC ModelServer at %s:%d ...", bind, port)
    if values["grpc_socket_path"]:
      log.info("Running gRPC ModelServer at UNIX socket %s ...", values["grpc_socket_path"])
  rest = None
  if values["rest_api_port"]:
    rest = RestServer(core, bind=bind, port=values["rest_api_port"],
                      num_threads=values["rest_api_num_threads"],
                      timeout_ms=values["rest_api_timeout_in_ms"],
                      max_body_bytes=values["rest_api_max_body_bytes"],
                      prometheus_path=prometheus_path,
                      cors=values["rest_api_enable_cors_support"], ssl_context=rest_ssl)
    rest.start()
    log.info("Exporting HTTP/REST API at:%s:%d ...%s", bind, rest.port,
             " (https)" if rest_ssl else "")
  elif prometheus_path:
    log.warning("Prometheus metrics are enabled but --rest_api_port is 0: not exported")

  stop.wait()
  log.info("Shutting down")
  if rest is not None:
    rest.stop()
  if grpc_server is not None:
    grpc_server.stop(grace=2)
  manager.stop()
  core.stop()
  return 0


class _ConfigPoller:
  """Re-reads --model_config_file and applies it when its text changed.

  As Server::PollFilesystemAndReloadConfig (server.cc): a file that does not
  parse (an editor mid-write) changes nothing, and an empty file is taken as
  "no action" (ServerCore::ReloadConfig), not as "unload everything".  A text
  counts as seen only once it applied, so an edit that fails (a label on a
  version that is not loaded yet) is tried again at the next poll; its error
  is logged once per change of text, not at every poll.
  """

  def __init__(self, path: str, log: logging.Logger):
    self.path, self.log = path, log
    self.applied = _read(path)
    self.reported: tuple[str | None, str] | None = None

  def step(self, manager: "ModelManager") -> None:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving import config
    from serving.errors import ServingError
    text = _read(self.path)
    if text == self.applied:
      self.reported = None         # back to what runs: report the next change again
      return
    if text is None:
      self._report(text, f"Failed to read ModelServerConfig file: {self.path}: cannot read it",
                   logging.ERROR)
      return
    server_config = model_server_config_pb2.ModelServerConfig()
    try:
      text_format.Parse(text, server_config)
    except text_format.ParseError as e:
      self._report(text, f"Failed to read ModelServerConfig file: {self.path}: {e}",
                   logging.ERROR)
      return
    if server_config.WhichOneof("config") is None:
      self._report(text, "Taking no action for empty config.", logging.INFO)
      return
    try:
      config.validate_model_server_config(server_config, self.path)
      if self.reported is None or self.reported[0] != text:   # not a retry
        self.log.info("Reloading model config from %s", self.path)
      manager.apply_config(server_config)
    except ServingError as e:
      self._report(text, f"PollFilesystemAndReloadConfig failed to ReloadConfig: {e}",
                   logging.ERROR)
      return
    self.applied, self.reported = text, None

  def _report(self, text: str | None, message: str, level: int) -> None:
    if self.reported != (text, message):
      self.log.log(level, "%s", message)
      self.reported = (text, message)


def _tls(values: dict, log: logging.Logger) -> tuple[Any, Any]:
  """(gRPC server credentials or None, REST ssl context or None) from
  --ssl_config_file; a config that cannot be served stops start-up
  (server.cc: BuildServerCredentials), never a silent plaintext server."""
  from serving import tls
  if values["use_alts_credentials"]:
    raise ValueError("--use_alts_credentials: ALTS is not supported by the embedded server")
  path = values["ssl_config_file"]
  if not path:
    if values["rest_api_enable_ssl"]:
      raise ValueError("--rest_api_enable_ssl needs --ssl_config_file")
    log.info("Using InsecureServerCredentials")
    return None, None
  ssl_config = tls.read_ssl_config(path)
  log.info("Using SSL credentials")
  return (tls.grpc_credentials(ssl_config),
          tls.server_context(ssl_config) if values["rest_api_enable_ssl"] else None)


def _read(path: str) -> str | None:
  if not path:
    return None
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return None


def run() -> int:
  """The `vit-serving` console script: `python -m serving` with this process's arguments."""
  return main(sys.argv[1:])


if __name__ == "__main__":
  sys.exit(run())
