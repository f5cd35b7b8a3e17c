"""tensorflow_model_server's command-line flags, parsed the same way.

A command line written for TF Serving must work unchanged, so the names,
defaults and meanings are TF Serving's (model_servers/main.cc); flags that
configure machinery we do not have (TPUs, TFLite, ...) are accepted and
reported as ignored rather than rejected (security flags are not: an
--ssl_config_file that cannot be served, or --use_alts_credentials, stops
start-up rather than serve plaintext).  `--flag=value` and `--flag value`
both work; booleans also take the bare `--flag` / `--noflag` forms.  Unknown
flags and stray arguments are reported and skipped, as TF's
Flags::Parse leaves them for tensorflow_model_server (main.cc), which starts
anyway; a bad value for a known flag stops start-up, as there.  The additions
are `--bind` (TF Serving always binds 0.0.0.0; we bind loopback unless
told), `--rest_api_max_body_bytes` and `--rest_api_enable_ssl`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Flag:
  type: type
  default: Any
  help: str
  used: bool = True   # False: accepted for compatibility, has no effect here


def _f(type_: type, default: Any, help_: str, used: bool = True) -> Flag:
  return Flag(type_, default, help_, used)


FLAGS: dict[str, Flag] = {
    "port": _f(int, 8500, "TCP port for gRPC (0: no gRPC TCP listener)"),
    "grpc_socket_path": _f(str, "", "also serve gRPC on this UNIX domain socket"),
    "rest_api_port": _f(int, 0, "port for HTTP/REST (0: no REST server)"),
    "rest_api_num_threads": _f(int, 16, "threads that read and write REST JSON (connections "
                               "wait on one event loop)"),
    "rest_api_timeout_in_ms": _f(int, 30000, "timeout for REST requests"),
    "rest_api_enable_cors_support": _f(bool, False, "answer CORS preflight requests"),
    "rest_api_enable_ssl": _f(bool, False, "serve REST over https with --ssl_config_file's key "
                              "pair (embedded server only; TF Serving's REST is plain HTTP)"),
    "ssl_config_file": _f(str, "", "SSLConfig text proto: serve gRPC over TLS"),
    "rest_api_max_body_bytes": _f(int, 256 << 20,
                                  "largest REST request body accepted (embedded server only)"),
    "bind": _f(str, "127.0.0.1", "address to listen on (embedded server only; "
               "TF Serving always uses 0.0.0.0)"),
    "enable_batching": _f(bool, False, "batch concurrent requests"),
    "allow_version_labels_for_unavailable_models": _f(
        bool, False, "let a label point at a version that is not AVAILABLE yet"),
    "batching_parameters_file": _f(str, "", "BatchingParameters text proto"),
    "model_config_file": _f(str, "", "ModelServerConfig text proto (overrides "
                            "--model_name/--model_base_path)"),
    "model_config_file_poll_wait_seconds": _f(
        int, 0, "re-read --model_config_file this often (0: never)"),
    "model_name": _f(str, "default", "name of the single model to serve"),
    "model_base_path": _f(str, "", "repository of the single model to serve"),
    "max_num_load_retries": _f(int, 5, "retries of a failed load"),
    "load_retry_interval_micros": _f(int, 60 * 1000 * 1000, "wait between load retries"),
    "file_system_poll_wait_seconds": _f(
        int, 1, "poll model repositories this often (0: once at start-up; "
        "negative: never)"),
    "enable_model_warmup": _f(bool, True, "replay assets.extra/tf_serving_warmup_requests"),
    "num_request_iterations_for_warmup": _f(int, 1, "times each warmup record is replayed"),
    "monitoring_config_file": _f(str, "", "MonitoringConfig text proto"),
    "grpc_channel_arguments": _f(str, "", "comma-separated gRPC channel args, "
                                 "e.g. grpc.max_receive_message_length=100"),
    "grpc_max_threads": _f(int, 0, "threads for blocking request work (0: 4 x cores, at "
                           "least 8)"),
    "saved_model_tags": _f(str, "serve", "comma-separated MetaGraph tags to load"),
    "tensorflow_intra_op_parallelism": _f(int, 0, "TF intra-op threads (0: auto)"),
    "tensorflow_inter_op_parallelism": _f(int, 0, "TF inter-op threads (0: auto)"),
    "tensorflow_session_parallelism": _f(int, 0, "TF threads for both pools (0: auto)"),
    "xla_cpu_compilation_enabled": _f(
        bool, False, "keep XLA compilation on; without it (or --xla_gpu_compilation_enabled) "
        "TensorFlow's DisableXlaCompilation() is called, as in TF Serving, and jax2tf exports "
        "fail to load (warmup) or to run: 'XLA compilation disabled'"),
    "enable_grpc_healthcheck_service": _f(bool, False, "serve grpc.health.v1.Health"),
    "enable_signature_method_name_check": _f(
        bool, False, "Classify/Regress/Predict only on signatures of their method_name"),
    "enable_serialization_as_tensor_content": _f(
        bool, False, "Predict responses carry values in tensor_content"),
    "enable_per_model_batching_parameters": _f(
        bool, False, "with --enable_batching, batch a version only with the "
        "batching_params.pbtxt in its directory"),
    "version": _f(bool, False, "print the version and exit"),
    "xla_gpu_compilation_enabled": _f(
        bool, False, "GPU: XLA:CPU and XLA:GPU JIT in TF Serving; here it keeps XLA "
        "compilation on, as --xla_cpu_compilation_enabled does"),
    "use_alts_credentials": _f(bool, False, "ALTS credentials: not supported here, an error"),
    # Accepted so that TF Serving command lines run; no effect here (a
    # non-default value is logged as ignored at start-up).
    "per_process_gpu_memory_fraction": _f(
        float, 0.0, "GPU: share of GPU memory TF Serving's process allocator takes, shared "
        "by every loaded version (0: TensorFlow's default); no effect here", used=False),
    "num_load_threads": _f(int, 0, "threads loading versions; no effect here (one at a "
                           "time)", used=False),
    "num_unload_threads": _f(int, 0, "threads unloading versions; no effect here", used=False),
    "flush_filesystem_caches": _f(bool, True, "flush file-system caches after loads; no "
                                  "effect here", used=False),
    "tensorflow_session_config_file": _f(str, "", "SessionConfig text proto; no effect here",
                                         used=False),
    "platform_config_file": _f(str, "", "PlatformConfigMap text proto; no effect here",
                               used=False),
    "remove_unused_fields_from_bundle_metagraph": _f(
        bool, True, "drop unused MetaGraph fields after load; no effect here", used=False),
    "prefer_tflite_model": _f(bool, False, "TFLite: no effect here", used=False),
    "num_tflite_pools": _f(int, 1, "TFLite: no effect here", used=False),
    "num_tflite_interpreters_per_pool": _f(int, 1, "TFLite: no effect here", used=False),
    "enable_profiler": _f(bool, True, "TF profiler service: no effect here", used=False),
    "thread_pool_factory_config_file": _f(str, "", "ThreadPoolConfig text proto; no effect "
                                          "here", used=False),
    "mixed_precision": _f(str, "", "GPU: mixed-precision mode (bf16); no effect here",
                          used=False),
    "skip_initialize_tpu": _f(bool, False, "TPU: no effect here", used=False),
}


class FlagError(ValueError):
  """A command line tensorflow_model_server would reject."""


def parse(argv: list[str], unknown: list[str] | None = None) -> dict[str, Any]:
  """{flag name: value} for every flag, defaults filled in; the arguments
  that are no flag of ours are appended to `unknown` (if given)."""
  values = {name: flag.default for name, flag in FLAGS.items()}
  skipped = [] if unknown is None else unknown
  i = 0
  while i < len(argv):
    arg = argv[i]
    i += 1
    if not arg.startswith("-") or arg in ("-", "--"):
      skipped.append(arg)
      continue
    body = arg.lstrip("-")
    name, has_value, text = body.partition("=")
    flag = FLAGS.get(name)
    negated = FLAGS.get(name[2:]) if name.startswith("no") else None
    if flag is None and negated is not None and negated.type is bool:
      if has_value:
        raise FlagError(f"--{name} takes no value")
      values[name[2:]] = False
      continue
    if flag is None:
      skipped.append(arg)
      continue
    if not has_value:
      if flag.type is bool and (i >= len(argv) or argv[i].lower() not in _BOOLS):
        values[name] = True
        continue
      if i >= len(argv):
        raise FlagError(f"flag '--{name}' is missing its value")
      text = argv[i]
      i += 1
    values[name] = _convert(name, flag, text)
  return values


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(name: str, flag: Flag, text: str) -> Any:
  try:
    if flag.type is bool:
      return _BOOLS[text.lower()]
    return flag.type(text)
  except (KeyError, ValueError):
    kind = {bool: "a boolean", int: "an integer", float: "a number"}.get(flag.type, "a string")
    raise FlagError(f"illegal value '{text}' for flag '--{name}': expected {kind}") from None


def ignored(values: dict[str, Any]) -> list[str]:
  """The compatibility-only flags that were set to a non-default value."""
  return [name for name, flag in FLAGS.items()
          if not flag.used and values[name] != flag.default]


def usage() -> str:
  lines = ["usage: python -m serving [--flag=value ...]", ""]
  for name, flag in FLAGS.items():
    lines.append(f"  --{name}={flag.default!r:<14} {flag.help}")
  return "\n".join(lines)


def parse_or_exit(argv: list[str], unknown: list[str]) -> dict[str, Any]:
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(usage())
    sys.exit(0)
  try:
    return parse(argv, unknown)
  except FlagError as e:
    print(f"ERROR: {e}\n\n{usage()}", file=sys.stderr)
    sys.exit(1)
