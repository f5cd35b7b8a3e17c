"""tensorflow_model_server's command line and config files: TF Serving's
syntax is accepted unchanged, and what it would reject fails start-up with
its message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import text_format

from serving import config, flags
from serving.errors import ServingError
from tests.support import tiny_models


def test_flag_syntaxes_and_defaults():
  values = flags.parse(["--port=9000", "--rest_api_port", "9001", "--enable_batching",
                        "--enable_model_warmup=false", "--model_name", "m",
                        "--xla_cpu_compilation_enabled=true"])
  assert values["port"] == 9000 and values["rest_api_port"] == 9001
  assert values["enable_batching"] is True and values["enable_model_warmup"] is False
  assert values["model_name"] == "m" and values["xla_cpu_compilation_enabled"] is True
  assert values["file_system_poll_wait_seconds"] == 1     # TF Serving's default
  assert values["bind"] == "127.0.0.1"
  assert values["enable_grpc_healthcheck_service"] is False  # TF Serving's default (main.cc)
  assert flags.parse(["--noenable_model_warmup"])["enable_model_warmup"] is False


@pytest.mark.parametrize("argv, message", [
    (["--port=abc"], "illegal value 'abc' for flag '--port'"),
    (["--port"], "missing its value"),
])
def test_bad_values_of_known_flags_are_errors(argv, message):
  with pytest.raises(flags.FlagError, match=message):
    flags.parse(argv)


def test_unknown_flags_are_collected_not_errors():
  unknown: list[str] = []
  values = flags.parse(["--no_such_flag=1", "--port=9", "stray",
                        "--enable_signature_method_name_check",
                        "--enable_serialization_as_tensor_content=true",
                        "--enable_per_model_batching_parameters"], unknown)
  assert unknown == ["--no_such_flag=1", "stray"] and values["port"] == 9
  assert values["enable_signature_method_name_check"] is True
  assert values["enable_serialization_as_tensor_content"] is True
  assert values["enable_per_model_batching_parameters"] is True


def test_compatibility_flags_are_reported_ignored():
  values = flags.parse(["--num_load_threads=4", "--port=1"])
  assert flags.ignored(values) == ["num_load_threads"]


def test_batching_parameters_text_proto(tmp_path):
  path = tmp_path / "batching.config"
  path.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
                  "max_enqueued_batches { value: 3 }\nnum_batch_threads { value: 2 }\n"
                  "allowed_batch_sizes: 2\nallowed_batch_sizes: 8\n"
                  "pad_variable_length_inputs: false\n")
  opts = config.read_batching_options(str(path))
  assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches,
          opts.num_batch_threads, opts.allowed_batch_sizes) == (8, 2000, 3, 2, (2, 8))
  bad = text_format.Parse("max_batch_size { value: 8 } allowed_batch_sizes: 4",
                          config.BatchingParameters())
  with pytest.raises(ServingError, match="must match max_batch_size"):
    config.BatchingOptions.from_proto(bad)
  split = text_format.Parse(
      "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
      "max_execution_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8",
      config.BatchingParameters())
  opts = config.BatchingOptions.from_proto(split)
  assert (opts.max_batch_size, opts.execution_batch_size) == (64, 8)


def test_monitoring_config(tmp_path):
  path = tmp_path / "monitoring.config"
  path.write_text("prometheus_config { enable: true }")
  assert config.read_prometheus_path(str(path)) == "/monitoring/prometheus/metrics"
  path.write_text('prometheus_config { enable: false path: "/x" }')
  assert config.read_prometheus_path(str(path)) is None


def test_model_config_errors(tmp_path):
  path = tmp_path / "models.config"
  path.write_text("model_config_list { config { name: 'a' base_path: '/a' } "
                  "config { name: 'a' base_path: '/b' } }")
  with pytest.raises(ServingError, match="Illegal to list model a multiple times"):
    config.read_model_server_config(path)
  path.write_text("model_config_list { config { nme: 'a' } }")
  with pytest.raises(ServingError, match=f"Invalid protobuf file: '{path}'"):
    config.read_model_server_config(path)


def _run_server(args: list[str], cwd) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "serving", *args], cwd=cwd, capture_output=True,
                        text=True, timeout=120,
                        env={"PYTHONPATH": str(tiny_models.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                             "PATH": "/usr/bin:/bin"})


def test_start_up_fails_on_unparsable_config_and_bad_flag_values(tmp_path):
  (tmp_path / "models.config").write_text("model_config_list {\n  config {\n    nme: 'a'\n")
  result = _run_server(["--port=0", "--model_config_file=models.config"], tmp_path)
  assert result.returncode != 0
  # TF Serving's two lines: protobuf's TextFormat parser (text_format.cc,
  # 1-based line:column) and the status of ParseProtoTextFile (proto_util.h).
  assert ("Error parsing text-format tensorflow.serving.ModelServerConfig: 3:5: Message type "
          '"tensorflow.serving.ModelConfig" has no field named "nme".') in result.stderr
  assert "Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: " \
         "'models.config'\n" in result.stderr
  result = _run_server(["--model_base_path=/x", "--port=x"], tmp_path)
  assert result.returncode != 0 and "illegal value 'x' for flag '--port'" in result.stderr


def test_help_lists_every_flag_with_what_it_does_here():
  result = subprocess.run([sys.executable, "-m", "serving", "--help"], capture_output=True,
                          text=True, timeout=60, cwd=tiny_models.ROOT)
  assert result.returncode == 0
  lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines()
           if line.startswith("  --")}
  assert set(lines) == {f"--{name}" for name in flags.FLAGS}
  for name in ("xla_gpu_compilation_enabled", "per_process_gpu_memory_fraction",
               "mixed_precision"):
    assert lines[f"--{name}"].split(maxsplit=1)[1].startswith("GPU: "), name
  assert "no effect here" in lines["--per_process_gpu_memory_fraction"]
  assert "DisableXlaCompilation" in lines["--xla_cpu_compilation_enabled"]
