"""Fault probes for publishing with several writers: a live export in another
PID namespace, a models.config update that fails after publishing (and its
retry), the permissions of a published version, a full disk during save, and
the command line's argument errors and messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from contract import model_config
from export import __main__ as cli
from export import exporter, remote, repository

ROOT = Path(__file__).resolve().parents[2]


def _args(data_dir: Path, project: Path, *extra: str) -> list[str]:
  return ["--checkpoint", str(data_dir / "vit_a_token.npz"), "--name", "m",
          "--repo", str(project / "models"), "--config", str(project / "vit.json"), *extra]


@pytest.fixture
def project(tmp_path, reference_manifest) -> Path:
  (tmp_path / "vit.json").write_text(json.dumps(reference_manifest["vit_a_token"]["config"]))
  return tmp_path


def _hold_lock(path: Path) -> subprocess.Popen:
  """A process that holds the lock of directory `path` (as a live export
  does) until its stdin closes; returns once the lock is taken."""
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent("""
          import fcntl, os, sys
          fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
          fcntl.flock(fd, fcntl.LOCK_EX)
          print("locked", flush=True)
          sys.stdin.read()
          """), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  return holder


@pytest.mark.parametrize("on_object_storage", [False, True])
def test_already_published_means_a_version_with_the_fingerprint(on_object_storage, tmp_path):
  """One rule for local and object-storage repositories: the first integer
  version whose manifest records the export's fingerprint."""
  manifest = repository.MANIFEST.as_posix()
  files = {f"m/1/{manifest}": json.dumps({"fingerprint": "aa"}).encode(),
           f"m/2/{manifest}": b"not JSON",
           "m/3/saved_model.pb": b"",  # no manifest: not an export of ours
           f"m/.tmp-1-x/{manifest}": json.dumps({"fingerprint": "bb"}).encode(),
           f"m/4/{manifest}": json.dumps({"fingerprint": "bb"}).encode(),
           f"m/5/{manifest}": json.dumps({"fingerprint": "bb"}).encode()}
  if on_object_storage:
    url = f"memory://published-{tmp_path.name}"
    store = remote.RemoteRepository(url)
    for rel, data in files.items():
      store.fs.pipe_file(f"{store.root}/{rel}", data)
    find = lambda fp, version=None: store.find_export("m", fp, version)  # noqa: E731
    where = lambda v: f"{url}/m/{v}"  # noqa: E731
  else:
    for rel, data in files.items():
      (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / rel).write_bytes(data)
    model_dir = tmp_path / "m"
    find = lambda fp, version=None: repository.find_export(model_dir, fp, version)  # noqa: E731
    where = lambda v: tmp_path / "m" / str(v)  # noqa: E731
  assert find("aa") == where(1)
  assert find("bb") == where(4)  # the first version; a temporary directory is none
  assert find("bb", 5) == where(5) and find("aa", 4) is None
  assert find("cc") is None


def test_stale_temporaries_are_told_by_lock_not_by_pid(tmp_path):
  # A live export from another PID namespace: its pid means nothing here.
  foreign = tmp_path / f".tmp-{2**22 + 7}-live"  # above pid_max: no such local process
  foreign.mkdir()
  (foreign / "saved_model.pb").write_bytes(b"half written")
  # A dead export whose pid happens to be alive here (pids are reused).
  dead = tmp_path / f".tmp-{os.getpid()}-dead"
  dead.mkdir()
  holder = _hold_lock(foreign)
  try:
    assert repository.remove_stale_temporaries(tmp_path) == [dead]
    assert (foreign / "saved_model.pb").exists()
  finally:
    holder.communicate("", timeout=30)
  assert repository.remove_stale_temporaries(tmp_path) == [foreign]
  assert list(tmp_path.iterdir()) == []


def test_staging_holds_its_lock_until_the_end(tmp_path):
  with repository.staging(tmp_path) as tmp:
    assert tmp.name.startswith(".tmp-")
    assert repository.remove_stale_temporaries(tmp_path) == []
    (tmp / "f").write_text("x")
    target = repository.publish(tmp, tmp_path, 1)
  assert [p.name for p in tmp_path.iterdir()] == ["1"] and (target / "f").exists()
  with pytest.raises(RuntimeError, match="boom"):
    with repository.staging(tmp_path):
      raise RuntimeError("boom")
  assert [p.name for p in tmp_path.iterdir()] == ["1"]


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def _modes(root: Path) -> set[tuple[str, int]]:
  return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode))
          for p in [root, *root.rglob("*")]}


def test_models_config_failure_after_publishing_tells_the_truth(
    project, data_dir, monkeypatch, capsys, umask_022):
  """The version is published and readable by others; models.config cannot be
  written (disk full): exit 3, a message that says so, the path on stdout.
  The retry adds the entry and does not make a second version."""
  (project / "models.config").write_text("# header\nmodel_config_list {}\n")

  def disk_full(path, text):
    raise OSError(28, "No space left on device")
  with monkeypatch.context() as m:
    m.setattr(model_config, "_replace", disk_full)
    assert cli.main(_args(data_dir, project)) == 3
  out, err = capsys.readouterr()
  version = project / "models" / "m" / "1"
  assert out.strip() == str(version)
  error = err.strip().splitlines()[-1]
  assert error.startswith(f"export: error: {version} is published, but m could not be "
                          f"added to {project / 'models.config'}")
  assert "No space left on device" in error and "Run the same command again" in error
  assert model_config.read(project / "models.config").model_config_list.config == []

  # Readable by a server running as another user: the umask's modes, not 0700.
  assert _modes(version) == {("dir", 0o755), ("file", 0o644)}

  assert cli.main(_args(data_dir, project)) == 0
  out, err = capsys.readouterr()
  assert out.strip() == str(version)
  assert "already holds this export" in err
  assert repository.versions(project / "models" / "m") == [1]
  text = (project / "models.config").read_text()
  assert text.startswith("# header\n")
  (entry,) = model_config.read(project / "models.config").model_config_list.config
  assert (entry.name, entry.base_path) == ("m", "models/m")

  # Other options are another export: a new version.
  labels = project / "labels.txt"
  labels.write_text("".join(f"c{i}\n" for i in range(10)))
  assert cli.main(_args(data_dir, project, "--labels", str(labels))) == 0
  assert repository.versions(project / "models" / "m") == [1, 2]


def test_full_disk_during_save_is_one_line_and_leaves_nothing(project, data_dir,
                                                              monkeypatch, capsys):
  def full(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(
        None, None, "models/m/.tmp-1-x/variables/variables.data-00000-of-00001.tempstate1; "
                    "No space left on device\n\tsecond line of TF's message")
  monkeypatch.setattr(tf.saved_model, "save", full)
  before = sorted(project.rglob("*"))
  assert cli.main(_args(data_dir, project)) == 1
  out, err = capsys.readouterr()
  assert out == ""
  errors = [line for line in err.splitlines() if not line.startswith("export: ") or
            line.startswith("export: error:")]
  assert len(errors) == 1 and errors[0].startswith("export: error: cannot write the "
                                                   "SavedModel")
  assert "No space left on device" in errors[0] and "Traceback" not in err
  assert sorted(project.rglob("*")) == before  # not even models/ or models/m/


def test_classifier_of_a_headless_checkpoint_suggests_features(project, data_dir):
  arrays = dict(np.load(data_dir / "vit_a_token.npz"))
  headless = project / "headless.npz"
  np.savez(headless, **{k: v for k, v in arrays.items() if not k.startswith("head/")})
  with pytest.raises(exporter.ExportError, match="no classification head.*--kind features"):
    exporter.export_checkpoint(str(headless), "m", project / "models",
                               config=str(project / "vit.json"))
  assert not (project / "models").exists()


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "missing.npz", "--model", "B/16"],
     "--checkpoint: missing.npz: no such file"),
    (["--checkpoint", "vit_base_patch16_224"], "did you mean B/16?"),
    (["--checkpoint", "B/16", "--model", "Q/16"], "--model: unknown model 'Q/16'"),
    (["--checkpoint", "B/16", "--config", "nope.json"], "--config: "),
    (["--checkpoint", "B/16", "--labels", "nope.txt"], "--labels: nope.txt: no such file"),
    (["--checkpoint", "B/16", "--kind", "features", "--labels", "x"],
     "--labels applies to classifiers only"),
    (["--checkpoint", "B/16", "--name", ".hidden"], "--name: bad model name"),
    (["--checkpoint", "B/16", "--image-size", "0"], "--image-size must be positive"),
    (["--checkpoint", "README.md"], "--config or --model is needed"),
])
def test_bad_arguments_exit_2_before_anything_is_written(args, message, tmp_path,
                                                         monkeypatch, capsys):
  (tmp_path / "README.md").write_text("an existing file whose name implies no model")
  monkeypatch.chdir(tmp_path)
  base = {"--name": "m", "--repo": "models"}
  for flag in args[::2]:
    base.pop(flag, None)
  with pytest.raises(SystemExit) as e:
    cli.parse_args([*args, *[x for kv in base.items() for x in kv]])
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_model_config_sentinel_is_not_a_path():
  assert exporter.DEFAULT_MODEL_CONFIG is not None
  assert not isinstance(exporter.DEFAULT_MODEL_CONFIG, (str, os.PathLike))
  assert exporter._model_config_path(exporter.DEFAULT_MODEL_CONFIG, Path("d")) == Path("d")
  assert exporter._model_config_path(None, Path("d")) is None
  # A file that happens to be named like the old string sentinel is a file.
  odd = "models.config next to the repository"
  assert exporter._model_config_path(odd, Path("d")) == Path(odd)
