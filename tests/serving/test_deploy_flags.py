"""One command line for every way the bundle runs tensorflow_model_server:
`make serve` (the embedded server), docker compose (CPU and GPU images) and
Kubernetes (the cpu and gpu overlays, and KServe's appended args) pass the
same flags with the same values.  What may differ is listed here, each with
its reason, so a flag added to one place and forgotten in another fails.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import PurePosixPath

import pytest

from tests.support import deploy as ds

CONTAINER_ROOT = PurePosixPath("/srv/vit")     # where compose and k8s put the repository
GPU_ONLY = {"xla_gpu_compilation_enabled", "per_process_gpu_memory_fraction"}
BATCHING = {"cpu": "deploy/config/batching_parameters.config",
            "gpu": "deploy/config/batching_parameters.gpu.config"}


def make_serve_flags() -> dict[str, str]:
  """The embedded server's flags as `make serve` runs them (make -n)."""
  result = subprocess.run(["make", "-n", "-o", "setup", "serve"], cwd=ds.ROOT, text=True,
                          capture_output=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if " -m serving " in line]
  assert len(lines) == 1, result.stdout
  args = shlex.split(lines[0])
  return ds.parse_flags(args[args.index("serving") + 1:])


def in_repository(flags: dict[str, str]) -> dict[str, str]:
  """Container paths (/srv/vit/...) as repository paths, so that the image's
  and the embedded server's command lines compare."""
  out = {}
  for name, value in flags.items():
    path = PurePosixPath(value)
    out[name] = str(path.relative_to(CONTAINER_ROOT)) if CONTAINER_ROOT in path.parents else value
  return out


def compose_flags(flavor: str) -> dict[str, str]:
  compose = ds.COMPOSE_GPU if flavor == "gpu" else ds.COMPOSE_CPU
  return in_repository(ds.parse_flags(ds.load_yaml(compose)["services"]["tfserving"]["command"]))


def test_make_serve_runs_the_cpu_image_command_line():
  flags = make_serve_flags()
  # --bind: the embedded server's addition (TF Serving binds 0.0.0.0); the
  # image's ports are published by compose, the embedded ones by make.
  assert flags.pop("bind") == "127.0.0.1"
  assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
  assert flags == compose_flags("cpu")


def test_the_gpu_image_adds_only_gpu_flags():
  cpu, gpu = compose_flags("cpu"), compose_flags("gpu")
  assert set(gpu) - set(cpu) == GPU_ONLY
  assert gpu.pop("batching_parameters_file") == BATCHING["gpu"]
  assert cpu.pop("batching_parameters_file") == BATCHING["cpu"]
  assert {k: v for k, v in gpu.items() if k not in GPU_ONLY} == cpu
  assert gpu["xla_gpu_compilation_enabled"] == "true"
  assert 0 < float(gpu["per_process_gpu_memory_fraction"]) < 1


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_kubernetes_runs_the_compose_command_line(flavor):
  flags = in_repository(ds.container_flags(ds.container(ds.render(ds.OVERLAYS[flavor]))))
  # The one difference: models.config comes from a ConfigMap mounted at
  # /srv/vit/config (deploy/base), not from the repository root.
  assert flags.pop("model_config_file") == "config/models.config"
  expected = compose_flags(flavor)
  expected.pop("model_config_file")
  assert flags == expected


def test_kserve_appends_the_same_flags():
  # KServe's runtime sets the ports and the model itself (one model, no
  # models.config); the flags it is given must carry compose's values, with
  # the config files mounted at /etc/tfserving.
  args = ds.one(ds.render(ds.DEPLOY / "kserve"), "InferenceService")["spec"]["predictor"]["model"]["args"]
  expected = compose_flags("cpu")
  for name, value in ds.parse_flags(args).items():
    if value.startswith("/etc/tfserving/"):
      value = "deploy/config/" + value.removeprefix("/etc/tfserving/")
    assert expected[name] == value, name
  assert {"xla_cpu_compilation_enabled", "enable_grpc_healthcheck_service"} <= set(
      ds.parse_flags(args))


def test_the_tuner_measures_the_make_serve_command_line():
  from ops.tune.measure import DEFAULT_COMMAND
  args = shlex.split(DEFAULT_COMMAND.format(
      python="python", grpc_port=1, rest_port=2, model_config="m.config",
      batching_flags="--enable_batching=true --batching_parameters_file=b.config",
      monitoring_config="monitoring.config", workdir="w"))
  assert args[:3] == ["python", "-m", "serving"]
  tuner, served = ds.parse_flags(args[3:]), make_serve_flags()
  served.pop("bind")
  # The tuner's own: free ports, its copy of models.config, the candidate's
  # batching file, a monitoring config it scrapes; and no load retries.
  for name in ("port", "rest_api_port", "model_config_file", "batching_parameters_file",
               "monitoring_config_file"):
    tuner.pop(name), served.pop(name)
  assert tuner.pop("max_num_load_retries") == "0"
  assert tuner == served
