"""The server, as tensorflow_model_server's Server (server.cc): built from
typed options, it owns the ServerCore, the services, both front ends and
the pollers, and starts and stops them.

`build_and_start` follows Server::BuildAndStart: TLS is read first (a config
that cannot be served fails before TensorFlow loads), then the config files;
the models are loaded and waited for until every one is AVAILABLE (a model
whose base path does not exist yet is waited for), and only then are the
ports opened and printed in TF Serving's log lines ("Running gRPC
ModelServer at ...", "Exporting HTTP/REST API at:...").  Flags, logging and
signals belong to `python -m serving` (__main__.py), so a test can run a
whole server in its own process.

Importing this module imports no TensorFlow: `build_and_start` imports it,
after quiet.start_tensorflow().
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
  from serving.grpc_service import GrpcServer
  from serving.metrics import Metrics
  from serving.rest import RestServer
  from serving.runner import Runner
  from serving.server_core import ServerCore
  from serving.services import ModelService, PredictionService

log = logging.getLogger("serving")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """The flags the server acts on (serving/flags.py has their defaults and
  help), typed, as main.cc fills Server::Options from its flags."""
  port: int
  grpc_socket_path: str
  grpc_channel_arguments: str
  grpc_max_threads: int
  enable_grpc_healthcheck_service: bool
  rest_api_port: int
  rest_api_num_threads: int
  rest_api_timeout_in_ms: int
  rest_api_enable_cors_support: bool
  rest_api_enable_ssl: bool
  rest_api_max_body_bytes: int
  bind: str
  ssl_config_file: str
  use_alts_credentials: bool
  model_config_file: str
  model_config_file_poll_wait_seconds: int
  model_name: str
  model_base_path: str
  file_system_poll_wait_seconds: int
  max_num_load_retries: int
  load_retry_interval_micros: int
  allow_version_labels_for_unavailable_models: bool
  saved_model_tags: str
  enable_model_warmup: bool
  num_request_iterations_for_warmup: int
  enable_batching: bool
  batching_parameters_file: str
  enable_per_model_batching_parameters: bool
  monitoring_config_file: str
  enable_signature_method_name_check: bool
  enable_serialization_as_tensor_content: bool
  tensorflow_intra_op_parallelism: int
  tensorflow_inter_op_parallelism: int
  tensorflow_session_parallelism: int
  xla_cpu_compilation_enabled: bool
  xla_gpu_compilation_enabled: bool

  @classmethod
  def from_flags(cls, values: Mapping[str, Any]) -> ServerOptions:
    """From flags.parse()'s {flag name: value}."""
    return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})


class Server:
  """One server: nothing runs until build_and_start, nothing after stop."""

  def __init__(self, options: ServerOptions):
    self.options = options
    self.metrics: Metrics | None = None
    self.runner: Runner | None = None
    self.core: ServerCore | None = None
    self.prediction_service: PredictionService | None = None
    self.model_service: ModelService | None = None
    self.grpc_server: GrpcServer | None = None
    self.rest_server: RestServer | None = None
    self.grpc_port: int | None = None      # bound TCP ports, once started
    self.rest_port: int | None = None
    self._prometheus_path: str | None = None   # --monitoring_config_file's, once read

  def build_and_start(self, before_ports: Callable[[], None] = lambda: None) -> None:
    """Loads the models and opens the ports, or raises (ServingError, OSError,
    ValueError, ...) after stopping whatever it had started. `before_ports`
    runs once the models are loaded, just before the ports open: __main__
    installs its signal handlers there, so a SIGTERM once the ports are
    announced is a clean stop while one during loading still ends the process."""
    try:
      grpc_credentials, rest_ssl = self._tls()
      from serving import quiet
      quiet.start_tensorflow()  # before anything imports TensorFlow
      self._build_core()
      before_ports()
      self._start_grpc(grpc_credentials)
      self._start_rest(rest_ssl)
    except BaseException:
      self.stop()
      raise

  def stop(self) -> None:
    """Closes the ports (calls in flight get 2 s to finish), stops the
    pollers, fails queued batched requests and ends the pools."""
    if self.rest_server is not None:
      self.rest_server.stop()
    if self.grpc_server is not None:
      self.grpc_server.stop(grace=2)
    if self.core is not None:
      self.core.stop()
    if self.runner is not None:
      self.runner.stop()

  def _tls(self) -> tuple[Any, Any]:
    """(gRPC server credentials or None, REST ssl context or None) from
    --ssl_config_file; a config that cannot be served stops start-up
    (server.cc: BuildServerCredentials), never a silent plaintext server."""
    from serving import tls
    o = self.options
    if o.use_alts_credentials:
      raise ValueError("--use_alts_credentials: ALTS is not supported by the embedded server")
    if not o.ssl_config_file:
      if o.rest_api_enable_ssl:
        raise ValueError("--rest_api_enable_ssl needs --ssl_config_file")
      log.info("Using InsecureServerCredentials")
      return None, None
    ssl_config = tls.read_ssl_config(o.ssl_config_file)
    log.info("Using SSL credentials")
    return (tls.grpc_credentials(ssl_config),
            tls.server_context(ssl_config) if o.rest_api_enable_ssl else None)

  def _build_core(self) -> None:
    """The ServerCore with its models AVAILABLE, the services, the pollers."""
    from serving import config, inference, warmup
    from serving.metrics import Metrics
    from serving.runner import Runner
    from serving.servable import Servable
    from serving.server_core import ConfigFilePoller, LoadOptions, ServerCore
    from serving.services import ModelService, PredictionService

    o = self.options
    poller = ConfigFilePoller(o.model_config_file)   # the text start-up reads is "applied"
    server_config = self._model_server_config()
    batching = (config.read_batching_options(o.batching_parameters_file)
                if o.enable_batching else None)
    self._prometheus_path = config.read_prometheus_path(o.monitoring_config_file)
    self._configure_tensorflow()
    self.metrics = Metrics()
    self.runner = Runner(self.metrics, batching=batching,
                         per_model_batching=o.enable_per_model_batching_parameters,
                         threads=o.grpc_max_threads)
    requests = inference.Options(method_name_check=o.enable_signature_method_name_check,
                                 tensor_content=o.enable_serialization_as_tensor_content)
    replay = functools.partial(warmup.replay, runner=self.runner, options=requests,
                               iterations=max(1, o.num_request_iterations_for_warmup))
    self.core = ServerCore(
        LoadOptions(tags=tuple(t for t in o.saved_model_tags.split(",") if t),
                    max_load_retries=o.max_num_load_retries,
                    load_retry_interval_s=o.load_retry_interval_micros / 1e6,
                    allow_labels_for_unavailable=o.allow_version_labels_for_unavailable_models),
        loader=functools.partial(Servable.load, read_batching_params=bool(
            batching and o.enable_per_model_batching_parameters)),
        warmup=replay if o.enable_model_warmup else None, metrics=self.metrics)
    self.prediction_service = PredictionService(self.core, self.runner, requests)
    self.model_service = ModelService(self.core, self.runner)
    self.core.reload_config(server_config)     # blocks until AVAILABLE, or fails start-up
    self.core.start_polling(
        o.file_system_poll_wait_seconds, functools.partial(poller.step, self.core),
        o.model_config_file_poll_wait_seconds if o.model_config_file else 0)

  def _model_server_config(self) -> Any:
    from serving import config
    o = self.options
    if o.model_config_file:
      return config.read_model_server_config(o.model_config_file)
    if o.model_base_path:
      return config.single_model_config(o.model_name, o.model_base_path)
    raise ValueError("Both server_model_config_file and model_base_path are empty! "
                     "(give --model_config_file, or --model_name and --model_base_path)")

  def _configure_tensorflow(self) -> None:
    import tensorflow as tf
    o = self.options
    both = o.tensorflow_session_parallelism
    intra = o.tensorflow_intra_op_parallelism or both
    inter = o.tensorflow_inter_op_parallelism or both
    if intra:
      tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
      tf.config.threading.set_inter_op_parallelism_threads(inter)
    if not o.xla_cpu_compilation_enabled and not o.xla_gpu_compilation_enabled:
      from serving.servable import disable_xla_compilation
      disable_xla_compilation()      # main.cc: DisableXlaCompilation()

  def _start_grpc(self, credentials: Any) -> None:
    from serving import grpc_service
    o = self.options
    if not (o.port or o.grpc_socket_path):
      return
    self.grpc_server, self.grpc_port = grpc_service.start(
        self.prediction_service, self.model_service, self.metrics, bind=o.bind, port=o.port,
        socket_path=o.grpc_socket_path, channel_arguments=o.grpc_channel_arguments,
        health_service=o.enable_grpc_healthcheck_service, credentials=credentials)
    if self.grpc_port:
      log.info("Running gRPC ModelServer at %s:%d ...", o.bind, self.grpc_port)
    if o.grpc_socket_path:
      log.info("Running gRPC ModelServer at UNIX socket %s ...", o.grpc_socket_path)

  def _start_rest(self, ssl_context: Any) -> None:
    from serving.rest import RestServer
    o = self.options
    if not o.rest_api_port:
      if self._prometheus_path:
        log.warning("Prometheus metrics are enabled but --rest_api_port is 0: not exported")
      return
    rest = RestServer(
        self.prediction_service, self.model_service, self.metrics, bind=o.bind,
        port=o.rest_api_port, num_threads=o.rest_api_num_threads,
        timeout_ms=o.rest_api_timeout_in_ms, max_body_bytes=o.rest_api_max_body_bytes,
        prometheus_path=self._prometheus_path, cors=o.rest_api_enable_cors_support,
        ssl_context=ssl_context)
    rest.start()                        # stops itself when it cannot bind
    self.rest_server, self.rest_port = rest, rest.port
    log.info("Exporting HTTP/REST API at:%s:%d ...%s", o.bind, self.rest_port, " (https)" if ssl_context else "")


__all__ = ["Server", "ServerOptions"]
