"""TF Serving's text-proto config files: models, batching, monitoring.

`ModelServerConfig` ships with tensorflow-serving-api; `BatchingParameters`
(session_bundle_config.proto) and `MonitoringConfig` (monitoring_config.proto)
do not, so they come from the descriptor set that declares them once from TF
Serving's .proto field lists (contract/_gen_protos.py), and are parsed with
protobuf's own text-format parser: a file written for
tensorflow_model_server parses, and a typo fails the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from contract import protos
from serving.errors import invalid_argument

# Not in the tensorflow-serving-api wheel: declared once, in the descriptor
# set contract/_gen_protos.py writes (MISSING_FROM_WHEEL).
BatchingParameters = protos.message_class("tensorflow.serving.BatchingParameters")
MonitoringConfig = protos.message_class("tensorflow.serving.MonitoringConfig")
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def parse_error_line(message, error: text_format.ParseError) -> str:
  """The line protobuf's C++ TextFormat parser logs for a file that does not
  parse (text_format.cc ReportError), which is what tensorflow_model_server
  prints on stderr and what operators grep for:
  "Error parsing text-format tensorflow.serving.ModelServerConfig: 3:5: ...".
  Python's ParseError carries the same 1-based line and column, prefixed to
  its text as "L:C : "."""
  line, column = error.GetLine(), error.GetColumn()
  text = str(error)
  if line is not None:
    prefix = f"{line}:{column} : " if column else f"{line} : "
    text = text.removeprefix(prefix)
    text = f"{line}:{column}: {text}"
  return f"Error parsing text-format {message.DESCRIPTOR.full_name}: {text}"


def parse_text(text: str, message, path: str | os.PathLike):
  """Fill `message` from text-proto `text` read from `path`, as TF Serving's
  ParseProtoTextFile (util/proto_util.h) does: the parser's error line goes
  to the log, the status says only "Invalid protobuf file: '<path>'"."""
  try:
    text_format.Parse(text, message)
  except text_format.ParseError as e:
    logging.getLogger("serving").error("%s", parse_error_line(message, e))
    raise invalid_argument(f"Invalid protobuf file: '{path}'") from None
  return message


def parse_text_file(path: str | os.PathLike, message):
  """Fill `message` from a text-proto file, or fail with TF Serving's words."""
  try:
    text = Path(path).read_text()
  except OSError as e:
    raise invalid_argument(f"Invalid protobuf file: '{path}': {e.strerror}") from None
  return parse_text(text, message, path)


def read_model_server_config(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
  config = parse_text_file(path, model_server_config_pb2.ModelServerConfig())
  resolve_base_paths(config, path)
  validate_model_server_config(config, str(path))
  return config


def resolve_base_paths(config: model_server_config_pb2.ModelServerConfig,
                       path: str | os.PathLike) -> None:
  """Makes relative base paths absolute under the config file's directory.

  The exporter writes "models/<name>" relative to models.config.
  tensorflow_model_server refuses relative base paths (ValidateModelConfigList
  in server_core.cc), so the image's entrypoint (tfserving-entrypoint.sh)
  serves a copy with them joined to BASE_PATH_ROOT, which compose and
  Kubernetes set to the config's directory, as ServerCore's
  model_config_list_root_dir would. Resolving against the file here, not the
  working directory, gives the embedded server the same answer from any
  directory it is started in. Absolute paths and URIs are left alone.
  """
  root = os.path.dirname(os.path.abspath(path))
  for model in config.model_config_list.config:
    if model.base_path and "://" not in model.base_path and not os.path.isabs(model.base_path):
      model.base_path = os.path.join(root, model.base_path)


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig,
                                 source: str, *, reload_request: bool = False) -> None:
  """What TF Serving checks before it acts on a config.

  A ReloadConfigRequest must carry a model_config_list (ModelServiceImpl in
  model_service_impl.cc: an empty config is INVALID_ARGUMENT there, not
  "unload everything") and absolute base paths (ValidateModelConfigList in
  server_core.cc); a config file may keep relative ones, which the server
  resolves against the file's directory (resolve_base_paths).  Every model needs a platform
  (GetPlatform in server_core.cc).
  """
  kind = config.WhichOneof("config")
  if reload_request and kind != "model_config_list":
    raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest."
                           " Only ModelConfigList is currently supported")
  if kind == "custom_model_config":
    raise invalid_argument(f"{source}: custom_model_config is not supported; use "
                           "model_config_list")
  names = [m.name for m in config.model_config_list.config]
  for name in names:
    if names.count(name) > 1:
      raise invalid_argument(f"Illegal to list model {name} multiple times in config list")
  for model in config.model_config_list.config:
    if not model.name or not model.base_path:
      raise invalid_argument(f"{source}: every model needs a name and a base_path")
    if reload_request and "://" not in model.base_path and not os.path.isabs(model.base_path):
      raise invalid_argument(f"Expected model {model.name} to have an absolute path or URI; "
                             f"got base_path()={model.base_path}")
    platform = model.model_platform or (
        "tensorflow" if model.model_type == model_server_config_pb2.TENSORFLOW else "")
    if not platform:
      raise invalid_argument(
          "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
          f"ModelServerConfig::model_platform, model name is {model.name}")
    if platform != "tensorflow":
      raise invalid_argument(
          f"Model {model.name}: platform {platform!r} is not supported "
          "(only \"tensorflow\")")


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
  """What --model_name/--model_base_path mean: one model, latest version."""
  config = model_server_config_pb2.ModelServerConfig()
  config.model_config_list.config.add(name=name, base_path=base_path,
                                      model_platform="tensorflow")
  return config


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
  """BatchingParameters with TF Serving's defaults filled in."""
  max_batch_size: int = 1000
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = 10
  num_batch_threads: int = max(1, len(os.sched_getaffinity(0)))
  allowed_batch_sizes: tuple[int, ...] = ()
  pad_variable_length_inputs: bool = False
  thread_pool_name: str = ""
  enable_large_batch_splitting: bool = False
  max_execution_batch_size: int = 0      # 0: max_batch_size

  @property
  def execution_batch_size(self) -> int:
    """The largest batch one model call runs: max_batch_size, or with
    splitting max_execution_batch_size (a larger request is split)."""
    if self.enable_large_batch_splitting and self.max_execution_batch_size:
      return self.max_execution_batch_size
    return self.max_batch_size

  @classmethod
  def from_proto(cls, p) -> "BatchingOptions":
    d = cls()

    def get(field: str):
      return getattr(p, field).value if p.HasField(field) else getattr(d, field)
    opts = cls(
        max_batch_size=get("max_batch_size"),
        batch_timeout_micros=get("batch_timeout_micros"),
        max_enqueued_batches=get("max_enqueued_batches"),
        num_batch_threads=get("num_batch_threads"),
        allowed_batch_sizes=tuple(p.allowed_batch_sizes),
        pad_variable_length_inputs=p.pad_variable_length_inputs,
        thread_pool_name=get("thread_pool_name"),
        enable_large_batch_splitting=get("enable_large_batch_splitting"),
        max_execution_batch_size=get("max_execution_batch_size"))
    opts.validate()
    return opts

  def validate(self) -> None:
    """batching/batching_session.cc CreateBasicBatchingSession's checks."""
    if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
      raise invalid_argument(
          "max_batch_size, num_batch_threads and max_enqueued_batches must be positive")
    if self.execution_batch_size > self.max_batch_size or self.execution_batch_size < 1:
      raise invalid_argument(
          f"max_execution_batch_size ({self.execution_batch_size}) must be between 1 and "
          f"max_batch_size ({self.max_batch_size})")
    sizes = self.allowed_batch_sizes
    if sizes:
      if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
        raise invalid_argument("allowed_batch_sizes entries must be monotonically increasing")
      if self.enable_large_batch_splitting:
        if sizes[-1] != self.execution_batch_size:
          raise invalid_argument(
              "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size; "
              f"last entry was {sizes[-1]}; expected {self.execution_batch_size}")
      elif sizes[-1] != self.max_batch_size:
        raise invalid_argument(
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
            f"{sizes[-1]}; expected {self.max_batch_size}")


def read_batching_options(path: str) -> BatchingOptions:
  if not path:
    return BatchingOptions()
  return BatchingOptions.from_proto(parse_text_file(path, BatchingParameters()))


def read_prometheus_path(path: str) -> str | None:
  """The metrics path when Prometheus export is enabled, else None."""
  if not path:
    return None
  config = parse_text_file(path, MonitoringConfig())
  if not config.prometheus_config.enable:
    return None
  return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


__all__ = ["BatchingOptions", "BatchingParameters", "MonitoringConfig",
           "parse_error_line", "parse_text", "parse_text_file", "read_batching_options", "read_model_server_config",
           "read_prometheus_path", "resolve_base_paths", "single_model_config", "validate_model_server_config"]
