"""Relative base paths in models.config ("models/<name>", as the exporter
writes them) mean the same thing wherever the config is read: relative to
the config file's directory.  tensorflow_model_server itself refuses them
(server_core.cc ValidateModelConfigList), so the image's entrypoint joins
them to BASE_PATH_ROOT (compose and Kubernetes: the config's directory);
the embedded server resolves them against the file, not its working
directory, so `python -m serving --model_config_file=...` works from any
directory, as a new user tries it.  The servers here serve their own
repositories, so these run on the embedded server only.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from serving import config
from tests.support import deploy as ds
from tests.support import tiny_models
from tests.support.remote import needs_embedded

RELATIVE = 'model_config_list { config { name: "tiny" base_path: "models/tiny" ' \
           'model_platform: "tensorflow" } }\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("project")
  tiny_models.write_tf2_model(root / "models" / "tiny" / "1")
  (root / "models.config").write_text(RELATIVE)
  (root / "elsewhere").mkdir()
  return root


def _available(server: tiny_models.ServerProcess) -> bool:
  with urllib.request.urlopen(f"http://{server.rest_address}/v1/models/tiny", timeout=30) as r:
    return b'"AVAILABLE"' in r.read()


@needs_embedded
@pytest.mark.parametrize("cwd, flag", [
    ("elsewhere", "ABSOLUTE"),           # another directory, absolute config path
    (".", "models.config"),              # the project root, as make serve
    ("elsewhere", "../models.config"),   # another directory, relative config path
])
def test_the_embedded_server_resolves_against_the_config_file(project, cwd, flag):
  flag = str(project / "models.config") if flag == "ABSOLUTE" else flag
  server = tiny_models.ServerProcess([f"--port={tiny_models.free_port()}",
                                  f"--rest_api_port={tiny_models.free_port()}",
                                  f"--model_config_file={flag}"], cwd=project / cwd)
  try:
    assert _available(server)
    assert f"from {project / 'models' / 'tiny' / '1'}" in server.log
  finally:
    server.stop()


def test_the_image_entrypoint_resolves_the_same_way(project, tmp_path):
  # The entrypoint with compose's and Kubernetes' setting (BASE_PATH_ROOT =
  # the config's directory) and with none (its default, the same), a
  # stand-in for tensorflow_model_server printing the config it is given.
  standin = tmp_path / "tensorflow_model_server"
  seen = tmp_path / "seen.config"
  standin.write_text('#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in '
                     f'--model_config_file=*) cat "${{a#*=}}" > {seen};; esac; done\n')
  standin.chmod(0o755)
  embedded = config.read_model_server_config(project / "models.config")
  for root in (str(project), None):
    env = dict(os.environ, TF_SERVING_BIN=str(standin), RESOLVED_CONFIG=str(tmp_path / "r"),
               CONFIG_SYNC_SECONDS="0.1")
    env.pop("BASE_PATH_ROOT", None)
    if root:
      env["BASE_PATH_ROOT"] = root
    # No pipes: the entrypoint's config-sync loop lives until the server's
    # exit is reaped (wait), and would hold a pipe open.
    process = subprocess.Popen(["bash", str(ds.CONFIG_DIR / "tfserving-entrypoint.sh"),
                                f"--model_config_file={project / 'models.config'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    assert process.wait(timeout=60) == 0
    assert ds.parse_model_server_config(seen.read_text()) == embedded


def test_absolute_paths_and_uris_are_left_alone(tmp_path):
  path = tmp_path / "models.config"
  path.write_text('model_config_list { config { name: "a" base_path: "/srv/a" } '
                  'config { name: "b" base_path: "gs://bucket/b" } '
                  'config { name: "c" base_path: "c" } }')
  parsed = ds.parse_model_server_config(path.read_text())
  config.resolve_base_paths(parsed, path)
  assert [m.base_path for m in parsed.model_config_list.config] == [
      "/srv/a", "gs://bucket/b", str(tmp_path / "c")]
