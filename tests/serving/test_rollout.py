"""The rollout tool (`python -m ops.rollout`), one test per step, through
its command line against a real embedded server: status, canary, promote,
rollback, retire, compare, a failed canary that changes nothing, and a server
restarted on the models.config the tool wrote.

Each test rolls out a model of its own (named after the test) on one shared
server, so tests pass alone and in any order; the restart test starts its own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from clients import GrpcClient
from contract import model_config
from ops import rollout
from tests.support import tiny_models
from tests.support.remote import needs_embedded

pytestmark = needs_embedded
METRICS = "/metrics"


class Server:
  """An embedded server over `root`, whose models.config starts empty."""

  def __init__(self, root: Path, *flags: str):
    self.root, self.config = root, root / "models.config"
    (root / "monitoring.config").write_text(
        f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
    self.process = tiny_models.ServerProcess([
        f"--port={tiny_models.free_port()}", f"--rest_api_port={tiny_models.free_port()}",
        f"--model_config_file={self.config}", "--max_num_load_retries=0",
        f"--monitoring_config_file={root / 'monitoring.config'}", *flags], cwd=root)
    self.channel = grpc.insecure_channel(self.process.grpc_address)
    self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

  def cli(self, model: str, *args: str) -> int:
    return rollout.main([f"--server={self.process.grpc_address}",
                         f"--model_config_file={self.config}", f"--model={model}",
                         f"--base_path_root={self.root}", "--timeout=60", *args])

  def version_for(self, model: str, label: str) -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version_label = model, label
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(
        np.zeros((1, tiny_models.IMAGE_SIZE, tiny_models.IMAGE_SIZE, 3), np.float32)))
    return self.stub.Predict(request, timeout=30).model_spec.version.value

  def close(self) -> None:
    self.channel.close()
    self.process.stop()


def _start(root: Path, *flags: str) -> Server:
  (root / "models.config").write_text("")      # no models: "Taking no action"
  (root / "models.config").chmod(0o644)
  return Server(root, *flags)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
  server = _start(tmp_path_factory.mktemp("rollout"))
  yield server
  server.close()


def _add_model(server: Server, repository: Path, name: str) -> None:
  """Versions 1 and 2 of the tiny model (and a broken 3) under models/<name>,
  served with version 1 pinned, as the exporter leaves a new model."""
  for v in (1, 2):
    shutil.copytree(repository / tiny_models.TF2_MODEL / str(v), server.root / "models" / name / str(v))
  (server.root / "models" / name / "3").mkdir()
  (server.root / "models" / name / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")

  def add(config) -> None:
    entry = config.model_config_list.config.add(
        name=name, base_path=f"models/{name}", model_platform="tensorflow")
    entry.model_version_policy.specific.versions.append(1)
    sent = type(config)()
    sent.CopyFrom(config)
    for e in sent.model_config_list.config:
      e.base_path = str(server.root / e.base_path)
    with GrpcClient(server.process.grpc_address, timeout=60) as client:
      client.reload_config(sent)
  model_config.update(server.config, add)


@pytest.fixture
def model(request, server: Server, repository: Path) -> str:
  name = re.sub(r"\W", "_", request.node.name)
  _add_model(server, repository, name)
  return name


def _entry(server: Server, model: str):
  return model_config.entry(model_config.read(server.config), model)


def _labels(server: Server, model: str) -> dict[str, int]:
  return dict(_entry(server, model).version_labels)


def _versions(server: Server, model: str) -> list[int]:
  return list(_entry(server, model).model_version_policy.specific.versions)


def test_status(server, model, capsys):
  assert server.cli(model, "canary", "1") == 0
  capsys.readouterr()
  assert server.cli(model, "status") == 0
  out = capsys.readouterr().out
  assert re.search(rf"{model}\s+version 1\s+AVAILABLE\s+labels stable", out), out


def test_canary(server, model):
  assert server.cli(model, "canary", "1") == 0              # the first becomes stable
  assert _labels(server, model) == {"stable": 1}
  assert server.cli(model, "canary", "2") == 0
  assert _labels(server, model) == {"stable": 1, "canary": 2}
  assert _versions(server, model) == [1, 2]
  assert (server.version_for(model, "stable"), server.version_for(model, "canary")) == (1, 2)
  assert server.config.stat().st_mode & 0o777 == 0o644     # the file's mode is kept


def test_load_serves_a_version_without_labelling_it(server, model):
  assert server.cli(model, "load", "2") == 0
  assert _versions(server, model) == [1, 2] and _labels(server, model) == {}
  with GrpcClient(server.process.grpc_address) as client:
    assert {s.version: s.state for s in client.status(model)} == {1: "AVAILABLE",
                                                                 2: "AVAILABLE"}
  assert server.cli(model, "load", "2") == 0                # again: nothing changes
  assert _versions(server, model) == [1, 2]


def test_load_of_a_broken_or_missing_version_drops_it_again(server, model, capsys):
  before = server.config.read_text()
  capsys.readouterr()
  assert server.cli(model, "load", "3") == 1                # not a SavedModel
  err = capsys.readouterr().err
  assert err.startswith(f"error: version 3 of {model} failed to load: "), err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert server.config.read_text() == before and _versions(server, model) == [1]
  assert server.cli(model, "--timeout=3", "load", "7") == 1  # no such directory
  assert f"version 7 of {model} not AVAILABLE after 3 s" in capsys.readouterr().err
  assert server.config.read_text() == before


def test_label_points_at_an_available_version_only(server, model, capsys):
  assert server.cli(model, "label", "blue", "1") == 0
  assert _labels(server, model) == {"blue": 1}
  assert server.version_for(model, "blue") == 1
  before = server.config.read_text()
  capsys.readouterr()
  assert server.cli(model, "label", "green", "2") == 1      # on disk, not loaded
  assert (capsys.readouterr().err ==
          f"error: version 2 of {model} is not AVAILABLE; label 'green' stays where it is\n")
  assert server.config.read_text() == before
  assert server.cli(model, "load", "2") == 0
  assert server.cli(model, "label", "blue", "2") == 0       # a label moves
  assert _labels(server, model) == {"blue": 2} and server.version_for(model, "blue") == 2


def test_steps_on_a_model_the_config_lacks_fail_in_one_line(server, capsys):
  for step in (["load", "1"], ["label", "stable", "1"], ["promote"]):
    before = server.config.read_text()
    capsys.readouterr()
    assert server.cli("absent", *step) == 1, step
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent" in err, err
    assert server.config.read_text() == before


def test_canary_of_a_broken_version_changes_nothing(server, model, capsys):
  assert server.cli(model, "canary", "1") == 0
  before = server.config.read_text()
  capsys.readouterr()
  assert server.cli(model, "canary", "3") == 1
  assert "failed to load" in capsys.readouterr().err
  assert server.config.read_text() == before
  assert server.version_for(model, "stable") == 1


def test_promote(server, model):
  assert server.cli(model, "canary", "1") == 0
  assert server.cli(model, "canary", "2") == 0
  assert server.cli(model, "promote") == 0
  assert _labels(server, model) == {"stable": 2, "previous": 1}
  assert (server.version_for(model, "stable"), server.version_for(model, "previous")) == (2, 1)


def test_rollback(server, model, capsys):
  assert server.cli(model, "canary", "1") == 0
  assert server.cli(model, "canary", "2") == 0
  assert server.cli(model, "rollback") == 0                 # drops the canary
  assert _labels(server, model) == {"stable": 1}
  assert server.cli(model, "canary", "2") == 0
  assert server.cli(model, "promote") == 0
  assert server.cli(model, "rollback") == 0                 # stable back to previous
  assert _labels(server, model) == {"stable": 1}
  assert server.version_for(model, "stable") == 1
  capsys.readouterr()
  assert server.cli(model, "rollback") == 1
  assert "neither a canary nor a previous version" in capsys.readouterr().err


def test_retire(server, model, capsys):
  assert server.cli(model, "canary", "1") == 0
  assert server.cli(model, "canary", "2") == 0
  assert server.cli(model, "retire", "2") == 1              # still labelled canary
  assert "still labelled canary" in capsys.readouterr().err
  assert server.cli(model, "promote") == 0
  assert server.cli(model, "retire", "1") == 0
  assert _versions(server, model) == [2] and _labels(server, model) == {"stable": 2}
  with GrpcClient(server.process.grpc_address) as client:
    assert {s.version: s.state for s in client.status(model)}[1] == "END"


def test_compare(server, model, capsys):
  assert server.cli(model, "canary", "1") == 0
  assert server.cli(model, "canary", "2") == 0
  for label, n in (("stable", 3), ("canary", 5)):
    for _ in range(n):
      server.version_for(model, label)
  capsys.readouterr()
  assert server.cli(model, "compare", f"--rest={server.process.rest_address}",
                    f"--metrics_path={METRICS}") == 0
  rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
  assert rows["1"][1:4] == ["stable", "3", "0"], rows
  assert rows["2"][1:4] == ["canary", "5", "0"], rows


def test_restart_serves_the_config_it_wrote(tmp_path, repository):
  """The file the tool wrote is what the server runs: a restart (with labels
  allowed at start-up, as tensorflow_model_server needs too) serves the same."""
  first = _start(tmp_path, "--allow_version_labels_for_unavailable_models")
  try:
    _add_model(first, repository, "m")
    for step in (["canary", "1"], ["canary", "2"], ["promote"]):
      assert first.cli("m", *step) == 0
  finally:
    first.close()
  again = Server(tmp_path, "--allow_version_labels_for_unavailable_models")
  try:
    with GrpcClient(again.process.grpc_address) as client:
      assert {s.version: s.state for s in client.status("m")} == {1: "AVAILABLE",
                                                                   2: "AVAILABLE"}
    assert (again.version_for("m", "stable"), again.version_for("m", "previous")) == (2, 1)
  finally:
    again.close()


@pytest.mark.parametrize("step", ["status", "canary", "promote", "rollback", "retire",
                                  "compare", "load", "label"])
def test_every_step_has_help(step):
  """Each step explains itself (that help imports nothing heavy is checked
  for every command line in tests/test_cli_help.py)."""
  result = subprocess.run([sys.executable, "-m", "ops.rollout", step, "--help"],
                          capture_output=True, text=True, timeout=60, cwd=tiny_models.ROOT)
  assert result.returncode == 0, result.stderr
  description = result.stdout.split("\n\n")[1]
  assert len(description) > 20, result.stdout
  assert result.stderr == ""


def test_a_refused_config_puts_the_file_back(server, model, capsys, monkeypatch):
  # The rollout writes models.config before it sends the config (so a
  # polling server never reads an older one); a refusal restores the file.
  original = server.config.read_text()
  sent_while_file_had = []
  reload_config = GrpcClient.reload_config

  def record(self, config, **kwargs):
    sent_while_file_had.append(_versions(server, model))
    return reload_config(self, config, **kwargs)

  monkeypatch.setattr(GrpcClient, "reload_config", record)
  model_config.update(server.config, lambda config: config.model_config_list.config.add(
      name="bad_platform", base_path="models/bad", model_platform="pytorch"))
  with_bad_entry = server.config.read_text()  # the server does not poll: not applied
  try:
    capsys.readouterr()
    assert server.cli(model, "load", "2") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: server refused the config: INVALID_ARGUMENT"), err
    assert err.count("\n") == 1
    assert sent_while_file_had == [[1, 2]]        # written first, then sent
    assert server.config.read_text() == with_bad_entry
    with GrpcClient(server.process.grpc_address) as client:
      assert [s.version for s in client.status(model)] == [1]
  finally:
    server.config.write_text(original)
