"""deploy/config/healthcheck.sh --models-from, the readiness check of docker
compose and Kubernetes, against a real server: ready exactly when every model
models.config names has an AVAILABLE version.  Runs against a real
tensorflow_model_server too (TF_SERVING_REST, see conftest.py; the script
speaks to 127.0.0.1)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlparse

from tests.support import deploy as ds

HEALTHCHECK = ds.CONFIG_DIR / "healthcheck.sh"


def _ready(rest_url: str, config: Path) -> int:
  port = urlparse(rest_url).port
  return subprocess.run(["bash", str(HEALTHCHECK), str(port), "--models-from", str(config)],
                        capture_output=True, timeout=60).returncode


def test_ready_when_every_configured_model_is_available(rest_url, repository):
  config = repository / "models.config"
  assert len(ds.parse_model_server_config(config.read_text()).model_config_list.config) > 1
  assert _ready(rest_url, config) == 0


def test_not_ready_when_one_configured_model_is_not(rest_url, repository, tmp_path):
  config = tmp_path / "models.config"
  config.write_text((repository / "models.config").read_text().rstrip().removesuffix("}") +
                    "  config { name: 'not_loaded' base_path: '/nowhere' "
                    "model_platform: 'tensorflow' }\n}\n")
  ds.parse_model_server_config(config.read_text())      # still a valid config
  assert _ready(rest_url, config) == 1


def test_not_ready_without_models_or_server(rest_url, tmp_path):
  empty = tmp_path / "empty.config"
  empty.write_text("")
  assert _ready(rest_url, empty) == 1
  from tests.support.tiny_models import free_port
  assert _ready(f"http://127.0.0.1:{free_port()}", tmp_path / "missing.config") == 1
