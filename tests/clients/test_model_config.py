"""contract.model_config: serialized writers, atomic replace, modes, comments."""

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contract import model_config

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
# Served models. Edited by python -m export and the rollout tool.
# Keep this header.

model_config_list {
  config {
    name: "a"  # this inline comment is lost on rewrite
    base_path: "models/a"
    model_platform: "tensorflow"
  }
}
"""


def _add(name: str):
  def edit(config):
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = f"models/{name}"
    entry.model_platform = "tensorflow"
  return edit


def _names(path: Path) -> list[str]:
  return [c.name for c in model_config.read(path).model_config_list.config]


def test_read_missing_file_is_an_empty_config(tmp_path):
  assert model_config.read(tmp_path / "models.config").ByteSize() == 0


def test_read_rejects_garbage_and_custom_configs(tmp_path):
  path = tmp_path / "models.config"
  path.write_text("model_config_list { nonsense: 1 }")
  with pytest.raises(model_config.ModelConfigError, match="not a ModelServerConfig"):
    model_config.read(path)
  path.write_text('custom_model_config { type_url: "x" }')
  with pytest.raises(model_config.ModelConfigError, match="custom_model_config"):
    model_config.read(path)


def test_update_keeps_leading_comments_and_entries(tmp_path):
  path = tmp_path / "models.config"
  path.write_text(CONFIG)
  assert model_config.update(path, _add("b"))
  text = path.read_text()
  assert text.startswith("# Served models. Edited by python -m export and the rollout tool.\n"
                         "# Keep this header.\n\n")
  assert _names(path) == ["a", "b"]
  assert "inline comment" not in text  # documented: body comments are not kept


def test_update_that_changes_nothing_does_not_write(tmp_path):
  path = tmp_path / "models.config"
  path.write_text(CONFIG)
  before = path.stat().st_mtime_ns, path.stat().st_ino
  assert not model_config.update(path, lambda config: None)
  assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
  assert not model_config.update(tmp_path / "new.config", lambda config: None)
  assert not (tmp_path / "new.config").exists()


def test_failed_edit_leaves_the_file_alone(tmp_path):
  path = tmp_path / "models.config"
  path.write_text(CONFIG)

  def edit(config):
    _add("b")(config)
    raise RuntimeError("server refused")

  with pytest.raises(RuntimeError, match="server refused"):
    model_config.update(path, edit)
  assert path.read_text() == CONFIG
  assert sorted(p.name for p in tmp_path.iterdir()) == [".models.config.lock", "models.config"]


def test_after_write_sees_the_new_file_and_a_failure_puts_the_old_one_back(tmp_path):
  path = tmp_path / "models.config"
  path.write_text(CONFIG)
  seen = []

  def refuse(config):
    seen.append((_names(path), [c.name for c in config.model_config_list.config]))
    raise RuntimeError("server refused")

  with pytest.raises(RuntimeError, match="server refused"):
    model_config.update(path, _add("b"), after_write=refuse)
  assert seen == [(["a", "b"], ["a", "b"])]     # the file was written before the step
  assert path.read_text() == CONFIG
  with pytest.raises(RuntimeError):
    model_config.update(tmp_path / "new.config", _add("b"), after_write=refuse)
  assert not (tmp_path / "new.config").exists()  # a file that was not there is removed again
  assert model_config.update(path, _add("b"), after_write=lambda config: None)
  assert _names(path) == ["a", "b"]
  sent = []          # nothing to change: the step still runs, on the file's config
  assert not model_config.update(path, lambda config: None, after_write=sent.append)
  assert [[c.name for c in s.model_config_list.config] for s in sent] == [["a", "b"]]
  assert sorted(p.name for p in tmp_path.iterdir()) == [".models.config.lock",
                                                        ".new.config.lock", "models.config"]


def test_new_file_mode_comes_from_the_umask_and_existing_mode_is_kept(tmp_path):
  path = tmp_path / "models.config"
  old = os.umask(0o022)
  try:
    model_config.update(path, _add("a"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o027)
    model_config.update(tmp_path / "other.config", _add("a"))
    assert stat.S_IMODE((tmp_path / "other.config").stat().st_mode) == 0o640
    path.chmod(0o664)
    model_config.update(path, _add("b"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
  finally:
    os.umask(old)


def test_write_failure_is_reported_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "models.config"
  path.write_text(CONFIG)

  def full_disk(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(model_config.os, "fsync", full_disk)
  with pytest.raises(model_config.ModelConfigError, match="cannot write .*No space left"):
    model_config.update(path, _add("b"))
  assert path.read_text() == CONFIG
  assert sorted(p.name for p in tmp_path.iterdir()) == [".models.config.lock", "models.config"]


def test_concurrent_writers_keep_every_entry(tmp_path):
  """Two processes x 100 read-modify-write updates: all 200 entries survive
  (without the lock a direct test kept 132 of 200)."""
  path = tmp_path / "models.config"
  path.write_text(CONFIG)
  script = textwrap.dedent("""
      import sys
      from contract import model_config
      path, tag = sys.argv[1], sys.argv[2]
      for i in range(100):
        def edit(config, i=i):
          entry = config.model_config_list.config.add()
          entry.name = f"{tag}{i}"
          entry.base_path = f"models/{tag}{i}"
        model_config.update(path, edit)
  """)
  procs = [subprocess.Popen([sys.executable, "-c", script, str(path), tag], cwd=ROOT)
           for tag in ("x", "y")]
  assert [p.wait(timeout=120) for p in procs] == [0, 0]
  names = _names(path)
  assert len(names) == 201
  assert set(names) == {"a"} | {f"{t}{i}" for t in "xy" for i in range(100)}
  assert path.read_text().startswith("# Served models.")
