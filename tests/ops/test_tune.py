"""The tuner end to end on a fast server (tests/ops/fake_server.py: a known
per-call cost, so batching's payoff is large and certain), its choice rule,
its files, and each error it must report in one clear line; and once with
its default command, the embedded server, on a real jax2tf export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from contract import protos
from ops.tune import report, search
from ops.tune.tuner import Result, Settings, Tuner, decide
from tests.support.paths import ROOT

FAKE = ("{python} -m tests.ops.fake_server --port={grpc_port} --rest_api_port={rest_port} "
        "{batching_flags} --fixed_ms=20")
BatchingParameters = protos.message_class("tensorflow.serving.BatchingParameters")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
  """models.config naming model `fake` (the fake server ignores the files)."""
  (tmp_path / "fake" / "1").mkdir(parents=True)
  (tmp_path / "fake" / "1" / "saved_model.pb").write_bytes(b"")
  config = tmp_path / "models.config"
  config.write_text('model_config_list { config { name: "fake" base_path: "fake" '
                    'model_platform: "tensorflow" } }\n')
  return config


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
  """A deliberately weak configuration to beat at 8 clients: batches of at most 2."""
  path = tmp_path / "shipped.config"
  path.write_text(search.make(2, 0, 1, 8).text_proto())
  return path


def tune(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "ops.tune", *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=timeout)


def test_search_finds_batching_and_writes_the_three_files(tmp_path, repo, shipped):
  out = tmp_path / "out"
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(out),
              "--server-cmd", FAKE, "--shipped", str(shipped), "--budget-s", "30",
              "--concurrency", "8", "--short-s", "0.3", "--long-s", "0.6",
              "--p99-ms", "1000")
  assert done.returncode == 0, done.stderr
  assert sorted(p.name for p in out.iterdir()) == sorted(report.FILES)
  result = json.loads((out / "report.json").read_text())
  measured = {c["candidate"]["name"]: c for c in result["candidates"] if c["levels"]}
  assert "batching off" in measured
  assert len(measured) >= 4, list(measured)       # more than shipped + off: it searched
  assert any(c["rung"] == "long" for c in result["candidates"])
  # At 20 ms per model call, one request per call caps "off" at 50 req/s;
  # batches of up to 8 serve 8 clients several times faster.
  chosen = result["chosen"]
  assert chosen["batching"] and chosen["max_batch_size"] >= 4
  off_c8 = next(lv for lv in measured["batching off"]["levels"] if lv["concurrency"] == 8)
  assert result["chosen_at_target"]["throughput"] > 2 * off_c8["throughput"]
  assert "mean_batch_size" not in off_c8
  winner = next(c for c in result["candidates"] if c["chosen"])
  assert winner["levels"][-1]["mean_batch_size"] > 1.5      # the server's own metrics
  assert "batches of" in result["why"]
  ship = [c["levels"] for c in result["candidates"] if c["candidate"]["source"] == "shipped"]
  assert ship and search.shortfall(winner["levels"], ship, 1000) is None
  assert result["chosen"]["source"] == "search" and "shipped configuration's better" in \
      result["why"]
  params = text_format.Parse((out / "batching_parameters.txt").read_text(), BatchingParameters())
  assert params.max_batch_size.value == chosen["max_batch_size"]
  assert list(params.allowed_batch_sizes) == chosen["allowed_batch_sizes"]
  assert "p99 <= 1000 ms" in (out / "batching_parameters.txt").read_text()
  assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert result["warmup"]["needs"] == chosen["allowed_batch_sizes"]


def test_ctrl_c_reports_what_was_measured(tmp_path, repo, shipped):
  levels_done = []

  def progress(used: float, what: str) -> None:
    if " c=" in what:
      levels_done.append(what)
      if len(levels_done) == 3:       # in the second configuration's first level
        raise KeyboardInterrupt

  settings = Settings(model="fake", model_config=repo, p99_ms=1000, levels=[1, 8],
                      budget_s=60, server_cmd=FAKE, shipped=shipped, short_s=0.3, long_s=0.5)
  result = Tuner(settings, progress).run()
  assert result["interrupted"]
  assert [len(c["levels"]) for c in result["candidates"]] == [2, 1]
  assert [c["complete"] for c in result["candidates"]] == [True, False]
  files = report.write(tmp_path / "out", result)
  assert all(f.exists() for f in files)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
  """The error line, after whatever the progress bar drew (it erases itself)."""
  assert done.returncode == 2, (done.stdout, done.stderr)
  assert "Traceback" not in done.stderr
  errors = [line for line in re.split(r"[\r\n]", done.stderr)
            if line.startswith("vit-tune: error: ")]
  assert len(errors) == 1, done.stderr
  return errors[0]


def test_unknown_model(tmp_path, repo):
  out = tmp_path / "out"
  done = tune("--model", "vit_nope", "--model-config", str(repo), "--out", str(out))
  assert _one_error_line(done) == ("vit-tune: error: unknown model 'vit_nope': "
                                   f"{repo} has fake")
  assert len(done.stderr.splitlines()) == 1 and not out.exists()


def test_budget_too_small(tmp_path, repo):
  out = tmp_path / "out"
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(out),
              "--budget-s", "2")
  assert "too small" in _one_error_line(done)
  assert not out.exists()


def test_server_that_fails_to_start_shows_its_log_tail(tmp_path, repo):
  out = tmp_path / "out"
  command = "sh -c 'echo port busy: {grpc_port} >&2; exit 3' {rest_port} {batching_flags}"
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(out),
              "--server-cmd", command, "--budget-s", "30")
  assert "exited with status 3" in _one_error_line(done)
  assert "port busy:" in done.stderr        # the log tail
  assert not out.exists()


def test_a_failed_load_is_reported_at_once_with_the_servers_message(tmp_path, repo):
  """A server that keeps running but reports the version END with an error
  (TF Serving retries such loads for minutes) fails the start with its message."""
  out = tmp_path / "out"
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(out),
              "--server-cmd", FAKE + " --load_error='Task size 4 is larger than maximum'",
              "--budget-s", "30", "--start-timeout-s", "120")
  line = _one_error_line(done)
  assert "failed to load fake: Task size 4 is larger than maximum" in line
  assert not out.exists()


def test_unmeetable_target_says_so_and_shows_the_closest(tmp_path, repo, shipped):
  out = tmp_path / "out"
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(out),
              "--server-cmd", FAKE, "--shipped", str(shipped), "--budget-s", "8",
              "--concurrency", "1", "--short-s", "0.3", "--long-s", "0.3", "--p99-ms", "1")
  line = _one_error_line(done)
  assert "no configuration meets p99 <= 1 ms" in line and "closest:" in line
  assert not out.exists()


def test_unknown_placeholder_is_refused_before_anything_runs(tmp_path, repo):
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(tmp_path / "o"),
              "--server-cmd", "server --port={grpc_port} {rest_port} {batching_flags} {gpu}")
  assert done.returncode == 2 and "unknown placeholder(s) ['gpu']" in done.stderr


def test_the_shipped_configuration_stays_when_nothing_beats_it(tmp_path, repo):
  """One client: every configuration without a timeout serves one request per
  50 ms model call, as the shipped one (batches of 1) does; batching off
  saves only the queue's hand-off, well under 5%, so the shipped
  configuration is the answer, and `why` says what the best other missed."""
  shipped = tmp_path / "ones.config"
  shipped.write_text(search.make(1, 0, 1, 1).text_proto())
  out = tmp_path / "out"
  done = tune("--model", "fake", "--model-config", str(repo), "--out", str(out),
              "--server-cmd", FAKE.replace("--fixed_ms=20", "--fixed_ms=50"),
              "--shipped", str(shipped), "--budget-s", "25", "--concurrency", "1",
              "--short-s", "0.5", "--long-s", "1.5", "--p99-ms", "1000")
  assert done.returncode == 0, done.stderr
  result = json.loads((out / "report.json").read_text())
  runs = [c for c in result["candidates"] if c["candidate"]["source"] == "shipped"]
  assert len(runs) == 2 and all(r["rung"] == "long" for r in runs)
  assert result["candidates"][0] is runs[0] and result["candidates"][-1] is runs[1]  # first, last
  assert len(result["candidates"]) >= 4, result["candidates"]        # it did search
  assert result["chosen"]["source"] == "shipped" and result["shipped_runs"] == 2
  assert "the shipped configuration stays" in result["why"]
  assert "may not replace it" in result["why"]


def _levels(*rows: tuple[int, float, float]) -> list[dict]:
  return [{"concurrency": c, "throughput": t, "p99_ms": p, "errors": {}} for c, t, p in rows]


SHIPPED = search.make(8, 2000, 2, 8, source="shipped")


def test_a_replacement_must_hold_every_level_within_the_shipped_noise_and_gain():
  # The shipped configuration's two runs: 10% apart at c=1, 2% apart at c=8.
  first, second = _levels((1, 100, 10), (8, 300, 40)), _levels((1, 90, 10), (8, 306, 40))
  assert search.floors([first, second], 50) == {1: 90, 8: 0.95 * 306}
  higher_total_but_worse_at_c1 = _levels((1, 50, 10), (8, 600, 40))
  within_noise_at_c1 = _levels((1, 91, 10), (8, 400, 45))     # under 95% of 100, above 90
  no_real_gain = _levels((1, 100, 10), (8, 310, 45))           # 410 < 1.05 x 406
  over_target = _levels((1, 500, 90), (8, 900, 95))
  results = [(search.make(8, 0, 1, 8), higher_total_but_worse_at_c1),
             (search.make(4, 0, 1, 8), within_noise_at_c1),
             (search.make(32, 0, 1, 8), over_target),
             (SHIPPED, first), (SHIPPED, second)]
  assert search.choose(results, 50)[1] is within_noise_at_c1
  assert "at c=1" in search.shortfall(higher_total_but_worse_at_c1, [first, second], 50)
  # One shipped run: 5% is the only allowance, so c=1 at 91 is under 95.
  assert search.shortfall(within_noise_at_c1, [first], 50).startswith("at c=1")
  kept = search.choose([(search.make(4, 0, 1, 8), no_real_gain), (SHIPPED, first),
                        (SHIPPED, second)], 50)
  assert kept == (SHIPPED, first)               # the shipped one's better run
  assert "not 1.05x" in search.shortfall(no_real_gain, [first, second], 50)
  # Without a shipped configuration the highest score wins.
  assert search.choose(results[:3], 50)[1] is higher_total_but_worse_at_c1
  assert search.choose([(search.OFF, over_target)], 50) is None


def test_when_every_long_result_misses_the_target_the_short_rung_decides():
  """A machine whose load rose during the long rung: nothing long meets
  50 ms, so the short rung decides, still held to the shipped runs'
  floors (they miss the target too, so they ask for nothing)."""
  shipped_long = Result(SHIPPED, "long", _levels((1, 80, 70), (8, 200, 90)))
  short_best = Result(search.make(16, 0, 2, 8), "short", _levels((1, 95, 12), (8, 420, 40)))
  short_other = Result(search.make(4, 0, 2, 8), "short", _levels((1, 97, 12), (8, 300, 45)))
  long_slow = Result(short_best.candidate, "long", _levels((1, 60, 60), (8, 150, 99)))
  chosen, rung, pool = decide([shipped_long, short_best, short_other, long_slow], 50)
  assert (chosen, rung) == (short_best, "short")
  assert long_slow not in pool and shipped_long in pool
  # The long rung decides as soon as anything in it meets the target.
  long_ok = Result(short_other.candidate, "long", _levels((1, 90, 20), (8, 250, 45)))
  assert decide([shipped_long, short_best, long_ok], 50)[:2] == (long_ok, "long")
  assert decide([shipped_long, long_slow], 50) is None


def test_no_candidate_is_smaller_than_the_versions_warmup_batches():
  """A version warming batches of 8 fails to load under max_batch_size 4."""
  kept = search.unique([*search.coarse(32), *search.neighbours(search.make(8, 0, 1, 32), 32)],
                       smallest=8)
  assert search.OFF in kept and min(c.max_batch_size for c in kept if not c.off) == 8
  assert any(c.max_batch_size == 4 for c in search.coarse(32))     # what was dropped


def test_neighbours_change_one_dimension_at_a_time():
  best = search.make(8, 2000, 2, 32)
  for other in search.neighbours(best, 32):
    changed = [(a, b) for a, b in zip(best.key[:3], other.key[:3]) if a != b]
    assert len(changed) == 1, (best, other)


def test_text_proto_round_trips_through_tf_servings_message():
  candidate = search.make(16, 1000, 4, 32)
  params = text_format.Parse(candidate.text_proto(), BatchingParameters())
  assert list(params.allowed_batch_sizes) == [1, 2, 4, 8, 16]
  assert (params.max_batch_size.value, params.batch_timeout_micros.value,
          params.num_batch_threads.value) == (16, 1000, 4)
  assert params.max_enqueued_batches.value >= params.num_batch_threads.value


def test_the_default_command_tunes_a_jax2tf_export_on_the_embedded_server(
    tmp_path, vit_a_token_version):
  # The embedded server as `make tune` starts it: a jax2tf export loads only
  # with XLA on (--xla_cpu_compilation_enabled), so this fails if the
  # default command drifts from `make serve`'s.
  vit_a_token_version(tmp_path / "vit" / "1")
  config = tmp_path / "models.config"
  config.write_text('model_config_list { config { name: "vit" base_path: "vit" '
                    'model_platform: "tensorflow" } }\n')
  out = tmp_path / "out"
  done = tune("--model", "vit", "--model-config", str(config), "--out", str(out),
              "--budget-s", "45", "--concurrency", "1", "--short-s", "0.3", "--long-s", "0.5",
              "--p99-ms", "10000", "--start-timeout-s", "60", timeout=240)
  assert done.returncode == 0, done.stderr
  assert sorted(p.name for p in out.iterdir()) == sorted(report.FILES)
  result = json.loads((out / "report.json").read_text())
  assert "--xla_cpu_compilation_enabled=true" in result["server_command"]
  measured = [c for c in result["candidates"] if c["levels"]]
  assert any(c["candidate"]["source"] == "shipped" for c in measured)
  assert all(not sum(lv["errors"].values()) and lv["throughput"] > 0
             for c in measured for lv in c["levels"])
