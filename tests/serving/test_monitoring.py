"""deploy/monitoring: the Prometheus alert rules and the Grafana dashboard,
validated with promtool (Debian's `prometheus` package;
checks/install_tools.sh installs it, and these tests fail without it), and
checked against what a real server exports: every dashboard query returns
data when Prometheus holds exactly the series the embedded server's metrics
page shows after real traffic, and the alert unit tests use those series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from contract import prometheus
from tests.support import deploy as ds
from tests.support import tiny_models
from tests.support.remote import REMOTE_GRPC, REMOTE_REST

MONITORING = ds.DEPLOY / "monitoring"
EXTERNAL = {"up", "kube_pod_container_status_ready"}   # Prometheus' and kube-state-metrics'


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
  tool = shutil.which("promtool")
  assert tool, "promtool not found: run checks/install_tools.sh (Debian package prometheus)"
  return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[str]:
  dashboard = json.loads((MONITORING / "dashboard.json").read_text())
  return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def as_prometheus_query(expr: str) -> str:
  """A Grafana query as Prometheus evaluates it: Grafana's variables filled in."""
  return expr.replace("$__rate_interval", "5m").replace("$model", ".*")


def test_alert_rules_pass_promtool_and_its_unit_tests():
  check = promtool("check", "rules", "alerts.yml")
  assert check.returncode == 0, check.stdout + check.stderr
  tests = promtool("test", "rules", "alerts.test.yml")
  assert tests.returncode == 0, tests.stdout + tests.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
  broken = tmp_path / "broken.yml"
  broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n"
                    "        expr: sum by (model_name (rate(x[5m]))\n")
  assert promtool("check", "rules", str(broken)).returncode != 0


def test_the_prometheus_rule_carries_the_same_groups():
  rule = ds.load_yaml(MONITORING / "prometheusrule.yaml")
  assert rule["kind"] == "PrometheusRule"
  assert rule["spec"]["groups"] == ds.load_yaml(MONITORING / "alerts.yml")["groups"]


def test_compose_prometheus_config_passes_promtool():
  result = promtool("check", "config", "prometheus.yml")
  assert result.returncode == 0, result.stdout + result.stderr
  config = ds.load_yaml(MONITORING / "prometheus.yml")
  job = config["scrape_configs"][0]
  assert job["metrics_path"] == ds.METRICS_PATH
  assert job["static_configs"][0]["targets"] == ["tfserving:8501"]


@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_monitoring_is_an_optional_compose_profile(flavor):
  path = ds.COMPOSE_GPU if flavor == "gpu" else ds.COMPOSE_CPU
  services = ds.load_yaml(path)["services"]
  for name in ("prometheus", "grafana"):
    assert services[name]["profiles"] == ["monitoring"], name
    for volume in services[name]["volumes"]:
      assert (path.parent / volume["source"]).resolve().exists(), volume
  assert "profiles" not in services["tfserving"]


def test_kustomize_deploys_monitor_rules_and_dashboard():
  objects = ds.render(MONITORING)
  kinds = {o["kind"]: o for o in objects}
  assert set(kinds) == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
  dashboard = kinds["ConfigMap"]
  assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
  assert json.loads(dashboard["data"]["dashboard.json"]) == json.loads(
      (MONITORING / "dashboard.json").read_text())


# --- against the metrics a real server exports ----------------------------------

@pytest.fixture(scope="module")
def exported(repository) -> list[prometheus.Sample]:
  """The embedded server's metrics after loads, batched requests and errors."""
  if REMOTE_GRPC or REMOTE_REST:
    pytest.skip("needs the server's --monitoring_config_file and batching flags")
  server = tiny_models.ServerProcess([
      f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
      f"--model_config_file={repository / 'models.config'}",
      "--allow_version_labels_for_unavailable_models", "--enable_batching=true",
      f"--batching_parameters_file={ds.CONFIG_DIR / 'batching_parameters.config'}",
      f"--monitoring_config_file={ds.CONFIG_DIR / 'monitoring.config'}"])
  try:
    with grpc.insecure_channel(server.grpc_address) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for images in (np.zeros((2, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, 3), np.float32),
                     np.zeros((2, 3), np.float32)):            # the second one fails
        request = predict_pb2.PredictRequest()
        request.model_spec.name = tiny_models.TF2_MODEL
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        try:
          stub.Predict(request, timeout=60)
        except grpc.RpcError:
          pass
    return prometheus.scrape(server.rest_address)
  finally:
    server.stop()


def _series(sample: prometheus.Sample) -> str:
  labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
  return f"{sample.name}{{{labels}}}"


def test_every_dashboard_query_has_data_from_the_servers_metrics(exported, tmp_path):
  assert any(s.labels.get("status", "OK") != "OK" for s in exported
             if s.name == ":tensorflow:serving:request_count"), "no failed request recorded"
  # Counters and histograms grow at the rate the scrape shows, for 10 minutes.
  series = [{"series": _series(s), "values": f"{s.value:g}+{s.value:g}x10"} for s in exported]
  tests = [{"expr": f"count({as_prometheus_query(q)}) > bool 0", "eval_time": "10m",
            "exp_samples": [{"labels": "{}", "value": 1}]} for q in dashboard_queries()]
  (tmp_path / "rules.yml").write_text("groups: []\n")
  (tmp_path / "dashboard.test.yml").write_text(yaml.safe_dump({
      "rule_files": ["rules.yml"],
      "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
  result = promtool("test", "rules", "dashboard.test.yml", cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  # The model picker's query, too.
  dashboard = json.loads((MONITORING / "dashboard.json").read_text())
  picker = dashboard["templating"]["list"][1]["query"]["query"]
  assert re.fullmatch(r"label_values\((\S+), model_name\)", picker)[1] in {
      s.name for s in exported}


def test_alert_unit_tests_use_series_the_server_exports(exported):
  names = {s.name for s in exported}
  tests = ds.load_yaml(MONITORING / "alerts.test.yml")["tests"]
  used = {re.match(r"[^{]+", s["series"])[0] for t in tests for s in t["input_series"]}
  assert used - EXTERNAL <= names, sorted(used - EXTERNAL - names)
