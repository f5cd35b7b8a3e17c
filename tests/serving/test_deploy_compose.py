"""The real tensorflow/serving deployment with docker compose: the compose
files, the text-proto configs they mount, and the two scripts that run inside
the image (the entrypoint that resolves models.config's relative base paths,
and the bash-only healthcheck).

No Docker daemon is available to the tests: the compose files are checked as
data (and with `docker compose config` where the Compose plugin exists), the
scripts are run here with bash against stand-ins for the server.
"""

from __future__ import annotations

import ast
import http.server
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
from google.protobuf import text_format

from tests.support import deploy as ds
from tests.support.tiny_models import free_port

COMPOSE_FILES = {"gpu": ds.COMPOSE_GPU, "cpu": ds.COMPOSE_CPU}
BATCHING_FILES = {"gpu": "batching_parameters.gpu.config", "cpu": "batching_parameters.config"}


def service(flavor: str) -> dict[str, Any]:
  compose = ds.load_yaml(COMPOSE_FILES[flavor])
  # tfserving, plus Prometheus and Grafana behind the optional "monitoring"
  # profile (tests/serving/test_monitoring.py).
  assert list(compose["services"]) == ["tfserving", "prometheus", "grafana"]
  assert "profiles" not in compose["services"]["tfserving"]
  return compose["services"]["tfserving"]


def mounts(svc: dict[str, Any], compose_file: Path) -> dict[PurePosixPath, Path]:
  """Container path -> host path of each bind mount (sources are relative to
  the compose file's directory, as Compose resolves them)."""
  result = {}
  for volume in svc["volumes"]:
    assert volume["type"] == "bind" and volume["read_only"] is True, volume
    result[PurePosixPath(volume["target"])] = (compose_file.parent / volume["source"]).resolve()
  return result


def host_path(container_path: str, svc_mounts: dict[PurePosixPath, Path]) -> Path:
  """Where a container path lies in this checkout, through the bind mounts."""
  path = PurePosixPath(container_path)
  for target, source in svc_mounts.items():
    if path == target or target in path.parents:
      return source.joinpath(*path.relative_to(target).parts)
  raise AssertionError(f"{container_path} is not under any mount: {list(svc_mounts)}")


@pytest.fixture(params=["gpu", "cpu"])
def flavor(request: pytest.FixtureRequest) -> str:
  return request.param


# --- the compose files ------------------------------------------------------

def test_image_is_pinned_tensorflow_serving(flavor: str) -> None:
  image = ds.compose_defaults(service(flavor)["image"])
  match = re.fullmatch(r"tensorflow/serving:(\d+\.\d+\.\d+)(-gpu)?", image)
  assert match, f"unpinned or unexpected image {image!r}"
  assert match.group(1) == ds.tfserving_version()
  assert bool(match.group(2)) == (flavor == "gpu")
  assert service("cpu")["image"] + "-gpu" == service("gpu")["image"]


def test_the_version_is_set_only_in_serving_env() -> None:
  # Compose (this file's .env), kustomize (deploy/compose/kustomization.yaml) and
  # make check-tfserving (the Makefile) all read it from there.
  version = ds.tfserving_version()
  assert re.fullmatch(r"\d+\.\d+\.\d+", version)
  files = [*COMPOSE_FILES.values(), *ds.DEPLOY.rglob("*.yaml"), ds.ROOT / "Makefile",
           ds.ROOT / ".ci" / "run"]
  copies = [str(f.relative_to(ds.ROOT)) for f in files if version in f.read_text()]
  assert not copies, f"{version} written again in {copies}"
  make = subprocess.run(["make", "-s", "-f", "-", "print"], cwd=ds.ROOT, text=True,
                        input="include Makefile\nprint:\n\t@echo $(TFSERVING_VERSION)\n",
                        capture_output=True, timeout=60)
  assert make.stdout.strip() == version, make.stderr


def test_server_flags_exist_in_the_pinned_release(flavor: str) -> None:
  version = tuple(int(p) for p in ds.tfserving_version().split(".")[:2])
  for flag in ds.parse_flags(service(flavor)["command"]):
    since = ds.FLAGS_SINCE.get(flag)
    assert since is None or version >= tuple(int(p) for p in since.split(".")), (
        f"--{flag} needs tensorflow/serving >= {since}")


def test_every_command_flag_is_a_tensorflow_model_server_flag(flavor: str) -> None:
  flags = ds.parse_flags(service(flavor)["command"])
  unknown = set(flags) - ds.TF_MODEL_SERVER_FLAGS
  assert not unknown, f"not tensorflow_model_server flags: {sorted(unknown)}"


def test_command_flags_this_bundle_needs(flavor: str) -> None:
  flags = ds.parse_flags(service(flavor)["command"])
  assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
  assert flags["xla_cpu_compilation_enabled"] == "true"  # jax2tf XlaCallModule
  assert flags.get("xla_gpu_compilation_enabled") == ("true" if flavor == "gpu" else None)
  assert flags["enable_grpc_healthcheck_service"] == "true"
  # Would put top_k_labels into tensor_content, which the clients do not read.
  assert "enable_serialization_as_tensor_content" not in flags
  assert flags["enable_batching"] == "true"
  assert flags["enable_model_warmup"] == "true"
  assert int(flags["model_config_file_poll_wait_seconds"]) > 0  # label switches apply
  assert int(flags["file_system_poll_wait_seconds"]) > 0        # new versions load
  assert PurePosixPath(flags["batching_parameters_file"]).name == BATCHING_FILES[flavor]
  assert PurePosixPath(flags["monitoring_config_file"]).name == "monitoring.config"


def test_config_paths_are_the_repository_files_through_the_mount(flavor: str) -> None:
  svc = service(flavor)
  svc_mounts = mounts(svc, COMPOSE_FILES[flavor])
  flags = ds.parse_flags(svc["command"])
  # The mounted models.config is the one the exporter keeps at the root.
  assert host_path(flags["model_config_file"], svc_mounts) == ds.ROOT / "models.config"
  for name in ("batching_parameters_file", "monitoring_config_file"):
    assert host_path(flags[name], svc_mounts) == ds.CONFIG_DIR / PurePosixPath(flags[name]).name
    assert host_path(flags[name], svc_mounts).is_file()
  # The repository root itself is mounted (a single-file mount of
  # models.config would not see the exporter's rename-into-place updates).
  assert ds.ROOT in svc_mounts.values()


def test_relative_base_paths_resolve_under_the_mounted_repository(flavor: str) -> None:
  svc = service(flavor)
  svc_mounts = mounts(svc, COMPOSE_FILES[flavor])
  root = svc["environment"]["BASE_PATH_ROOT"]
  # The exporter writes base_path relative to models.config's directory.
  config_dir = PurePosixPath(ds.parse_flags(svc["command"])["model_config_file"]).parent
  assert PurePosixPath(root) == config_dir
  assert host_path(f"{root}/models/{ds.DEFAULT_MODEL}", svc_mounts) == (
      ds.ROOT / "models" / ds.DEFAULT_MODEL)


def test_entrypoint_and_healthcheck_scripts_come_from_the_mount(flavor: str) -> None:
  svc = service(flavor)
  svc_mounts = mounts(svc, COMPOSE_FILES[flavor])
  assert svc["entrypoint"][0] == "bash"
  assert host_path(svc["entrypoint"][1], svc_mounts) == ds.CONFIG_DIR / "tfserving-entrypoint.sh"
  test = [ds.compose_defaults(part) for part in svc["healthcheck"]["test"]]
  assert test[:2] == ["CMD", "bash"]
  assert host_path(test[2], svc_mounts) == ds.CONFIG_DIR / "healthcheck.sh"
  # Readiness follows models.config (every model it names), not one model.
  assert test[3:5] == ["8501", "--models-from"]
  assert host_path(test[5], svc_mounts) == ds.ROOT / "models.config"
  assert svc["init"] is True


def test_ports_are_published_on_loopback_by_default(flavor: str) -> None:
  ports = [ds.compose_defaults(p) for p in service(flavor)["ports"]]
  assert ports == ["127.0.0.1:8500:8500", "127.0.0.1:8501:8501"]


def test_gpu_reservation_only_in_the_gpu_file() -> None:
  devices = service("gpu")["deploy"]["resources"]["reservations"]["devices"]
  assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
  assert "deploy" not in service("cpu")


def test_cpu_file_differs_only_in_image_batching_and_gpu() -> None:
  gpu, cpu = service("gpu"), service("cpu")
  gpu_only = ("--xla_gpu_compilation_enabled=", "--per_process_gpu_memory_fraction=")
  gpu["command"] = [f for f in gpu["command"] if not f.startswith(gpu_only)]
  for svc in (gpu, cpu):
    svc.pop("image")
    svc.pop("deploy", None)
    svc["command"] = [f for f in svc["command"]
                      if not f.startswith("--batching_parameters_file=")]
  assert gpu == cpu


def test_the_embedded_server_accepts_the_same_command_and_files(flavor: str) -> None:
  # One command line and one set of config files fit both servers.
  from serving import config as embedded_config, flags as embedded_flags

  svc = service(flavor)
  svc_mounts = mounts(svc, COMPOSE_FILES[flavor])
  values = embedded_flags.parse(svc["command"])
  assert values["batching_parameters_file"].endswith(BATCHING_FILES[flavor])
  batching = embedded_config.read_batching_options(
      str(host_path(values["batching_parameters_file"], svc_mounts)))
  assert batching.allowed_batch_sizes == tuple(_batching(flavor).allowed_batch_sizes)
  assert embedded_config.read_prometheus_path(
      str(host_path(values["monitoring_config_file"], svc_mounts))) == ds.METRICS_PATH


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_the_files(flavor: str) -> None:
  probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
  if probe.returncode != 0:
    pytest.skip("the docker client has no Compose plugin")
  result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILES[flavor]), "config",
                           "--quiet"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr


# --- the text protos ----------------------------------------------------------

def _exporter_warmup_batch_sizes() -> tuple[int, ...]:
  """export_checkpoint's default warmup_batch_sizes, read from the source
  (importing the exporter would load TensorFlow and JAX)."""
  tree = ast.parse((ds.ROOT / "export" / "exporter.py").read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name == "export_checkpoint":
      args = node.args
      for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if arg.arg == "warmup_batch_sizes":
          return tuple(ast.literal_eval(default))
  raise AssertionError("export_checkpoint(warmup_batch_sizes=...) not found")


def _batching(flavor: str) -> Any:
  return ds.parse_text_proto((ds.CONFIG_DIR / BATCHING_FILES[flavor]).read_text(),
                             ds.BatchingParameters)


def test_batching_parameters_parse_and_are_consistent(flavor: str) -> None:
  params = _batching(flavor)
  sizes = list(params.allowed_batch_sizes)
  assert sizes == sorted(set(sizes)) and sizes[0] == 1
  assert sizes[-1] == params.max_batch_size.value  # TF Serving requires it
  assert params.batch_timeout_micros.value > 0
  assert params.num_batch_threads.value >= 1
  assert params.max_enqueued_batches.value >= params.num_batch_threads.value


def test_cpu_batch_sizes_are_the_exporters_warmup_sizes() -> None:
  # Every size the server pads to is compiled by XLA while the version loads.
  assert tuple(_batching("cpu").allowed_batch_sizes) == _exporter_warmup_batch_sizes()
  gpu = list(_batching("gpu").allowed_batch_sizes)
  assert gpu[:len(_exporter_warmup_batch_sizes())] == list(_exporter_warmup_batch_sizes())


def test_batching_parser_rejects_an_unknown_field() -> None:
  with pytest.raises(text_format.ParseError):
    ds.parse_text_proto("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }",
                        ds.BatchingParameters)


def test_monitoring_config_exposes_prometheus_metrics() -> None:
  config = ds.parse_text_proto((ds.CONFIG_DIR / "monitoring.config").read_text(),
                               ds.MonitoringConfig)
  assert config.prometheus_config.enable
  assert config.prometheus_config.path == ds.METRICS_PATH


def test_repository_models_config_parses() -> None:
  path = ds.ROOT / "models.config"
  config = ds.parse_model_server_config(path.read_text())
  for model in config.model_config_list.config:
    if ds.uri_is_relative_path(model.base_path):
      # The entrypoint resolves it under the mounted repository root; a path
      # leading out of the repository would not exist in the container.
      resolved = (ds.ROOT / model.base_path).resolve()
      assert resolved == ds.ROOT or ds.ROOT in resolved.parents, model.base_path


# --- the entrypoint -----------------------------------------------------------

ENTRYPOINT = ds.CONFIG_DIR / "tfserving-entrypoint.sh"
CONFIG_TEXT = """\
model_config_list {
  config {
    name: "vit_digits"
    base_path: "models/vit_digits"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "elsewhere" base_path: "/data/elsewhere" model_platform: "tensorflow" }
  config { name: "bucket" base_path: "gs://bucket/vit/bucket" model_platform: "tensorflow" }
}
"""


class FakeServer:
  """Runs the entrypoint with a stand-in for tensorflow_model_server that
  prints its arguments and stays up until stopped."""

  def __init__(self, tmp: Path, args: list[str], env: dict[str, str]):
    self.tmp = tmp
    stub = tmp / "fake_model_server"
    stub.write_text('#!/usr/bin/env bash\necho "ARGS $*"\nexec sleep 60\n')
    stub.chmod(0o755)
    self.resolved = tmp / "resolved" / "models.config"
    self.resolved.parent.mkdir()
    environ = {k: v for k, v in os.environ.items() if k != "BASE_PATH_ROOT"}
    environ.update(TF_SERVING_BIN=str(stub), RESOLVED_CONFIG=str(self.resolved),
                   CONFIG_SYNC_SECONDS="0.1", **env)
    # Its own session, so that stop() can end the server and the sync loop.
    self.proc = subprocess.Popen(["bash", str(ENTRYPOINT), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=environ,
                                 start_new_session=True)

  def args(self, timeout: float = 30.0) -> list[str]:
    """The stand-in's arguments, from its first line, within `timeout`."""
    ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
    assert ready, f"the entrypoint printed nothing in {timeout:.0f} s"
    line = self.proc.stdout.readline()
    assert line.startswith("ARGS "), (line, self.proc.stderr.read())
    return line.split()[1:]

  def stop(self) -> None:
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.proc.wait(timeout=10)
    self.proc.stdout.close()
    self.proc.stderr.close()


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[FakeServer]:
  source = tmp_path / "repo" / "models.config"
  source.parent.mkdir()
  source.write_text(CONFIG_TEXT)
  server = FakeServer(tmp_path, ["--port=8500", f"--model_config_file={source}",
                                 "--model_config_file_poll_wait_seconds=10",
                                 "--enable_batching=true"],
                      {"BASE_PATH_ROOT": "/srv/vit"})
  yield server
  server.stop()


def test_entrypoint_serves_a_copy_with_absolute_base_paths(fake_server: FakeServer) -> None:
  args = fake_server.args()
  assert args == ["--port=8500", "--model_config_file_poll_wait_seconds=10",
                  "--enable_batching=true", f"--model_config_file={fake_server.resolved}"]
  resolved = ds.parse_model_server_config(fake_server.resolved.read_text())
  original = ds.parse_model_server_config(CONFIG_TEXT)
  paths = {m.name: m.base_path for m in resolved.model_config_list.config}
  assert paths == {"vit_digits": "/srv/vit/models/vit_digits",
                   "elsewhere": "/data/elsewhere", "bucket": "gs://bucket/vit/bucket"}
  assert not any(ds.uri_is_relative_path(p) for p in paths.values())
  # Only base_path changes: policies and labels (the A/B switch) are kept.
  for before, after in zip(original.model_config_list.config, resolved.model_config_list.config):
    after.base_path = before.base_path
  assert resolved == original


def test_entrypoint_follows_edits_of_models_config(fake_server: FakeServer) -> None:
  fake_server.args()
  source = fake_server.tmp / "repo" / "models.config"
  # Rename a new file into place, as the exporter and the rollout tool do.
  new = source.with_name("models.config.new")
  new.write_text(CONFIG_TEXT.replace('key: "canary" value: 2', 'key: "canary" value: 1'))
  os.replace(new, source)
  deadline = time.monotonic() + 10
  while True:
    config = ds.parse_model_server_config(fake_server.resolved.read_text())
    if config.model_config_list.config[0].version_labels["canary"] == 1:
      break
    assert time.monotonic() < deadline, "the resolved copy did not follow the edit"
    time.sleep(0.05)
  assert dict(config.model_config_list.config[0].version_labels) == {"stable": 1, "canary": 1}
  assert config.model_config_list.config[0].base_path == "/srv/vit/models/vit_digits"


def test_entrypoint_defaults_to_the_config_files_directory(tmp_path: Path) -> None:
  source = tmp_path / "repo" / "models.config"
  source.parent.mkdir()
  source.write_text(CONFIG_TEXT)
  server = FakeServer(tmp_path, [f"--model_config_file={source}"], {})
  try:
    server.args()
    config = ds.parse_model_server_config(server.resolved.read_text())
    assert config.model_config_list.config[0].base_path == f"{source.parent}/models/vit_digits"
  finally:
    server.stop()


def test_entrypoint_without_a_config_file_passes_flags_through(tmp_path: Path) -> None:
  server = FakeServer(tmp_path, ["--model_name=m", "--model_base_path=/models/m"], {})
  try:
    assert server.args() == ["--model_name=m", "--model_base_path=/models/m"]
    assert not server.resolved.exists()
  finally:
    server.stop()


# --- the healthcheck ------------------------------------------------------------

HEALTHCHECK = ds.CONFIG_DIR / "healthcheck.sh"
STATUS = b'{"model_version_status": [{"version": "2", "state": "AVAILABLE"}]}'


class _StatusHandler(http.server.BaseHTTPRequestHandler):
  """Answers like TF Serving's REST status endpoint for one model."""

  def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
    if self.path == "/v1/models/vit_digits":
      code, body = 200, STATUS
    else:
      code, body = 404, b'{"error": "Servable not found"}'
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args: Any) -> None:
    pass


@pytest.fixture(scope="module")
def status_server() -> Iterator[int]:
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server.server_address[1]
  server.shutdown()
  server.server_close()
  thread.join(timeout=10)


def _healthcheck(*args: str) -> int:
  return subprocess.run(["bash", str(HEALTHCHECK), *args], capture_output=True,
                        timeout=30).returncode


def test_healthcheck_passes_for_an_available_model(status_server: int) -> None:
  assert _healthcheck(str(status_server), "/v1/models/vit_digits", "AVAILABLE") == 0
  assert _healthcheck(str(status_server), "/v1/models/vit_digits") == 0


def test_healthcheck_fails_otherwise(status_server: int) -> None:
  assert _healthcheck(str(status_server), "/v1/models/other", "AVAILABLE") != 0
  assert _healthcheck(str(status_server), "/v1/models/vit_digits", "LOADING") != 0
  assert _healthcheck(str(free_port()), "/v1/models/vit_digits") != 0
