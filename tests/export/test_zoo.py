"""Named models and what --checkpoint values resolve to."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest

from export import augreg, configs, zoo
from export.zoo import __main__ as zoo_cli
from tests.support.augreg_index import index_csv

# The seed project's published models and ImageNet top-1 (issue 4).
SEED_TOP1 = {"B/8": 85.948, "L/16": 85.716, "B/16": 84.018, "R50+L/32": 83.784,
             "R26+S/32": 80.944, "R26+S/32-medium": 80.462, "S/16": 80.462, "B/32": 79.436}
FINETUNED_384 = ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
                 "--imagenet2012-steps_20k-lr_0.01-res_384")


def test_seed_models_match_the_published_table():
  assert {n: m.imagenet_top1 for n, m in zoo.SEED_MODELS.items()} == SEED_TOP1


@pytest.mark.parametrize("name", sorted(SEED_TOP1))
def test_seed_models_are_i21k_imagenet2012_224(name):
  seed = zoo.SEED_MODELS[name]
  parsed = augreg.parse_name(seed.filename)
  assert parsed.model == seed.model == name.removesuffix("-medium")
  assert parsed.pretraining.ds == "i21k"
  assert parsed.finetuning.adapt_ds == "imagenet2012"
  assert parsed.image_size == 224
  assert seed.augmentation in parsed.pretraining.aug  # "light" in "light0", ...


def test_r26_variants_differ_in_augmentation():
  light, medium = zoo.SEED_MODELS["R26+S/32"], zoo.SEED_MODELS["R26+S/32-medium"]
  assert (light.augmentation, medium.augmentation) == ("light", "medium")
  assert light.filename != medium.filename
  assert not medium.filename_confirmed and "Not confirmed" in medium.note


def test_seed_data_records_sources():
  data = json.loads(zoo._SEED_FILE.read_text())
  for row in data["models"]:
    assert row["filename_source"] in data["sources"]
    assert row["top1_source"] in data["sources"]


def test_seed_digests_are_known_or_null(monkeypatch):
  data = json.loads(zoo._SEED_FILE.read_text())
  for row in data["models"]:
    assert row["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", row["sha256"])
  assert zoo.resolve("B/16").sha256 == zoo.SEED_MODELS["B/16"].sha256
  known = dataclasses.replace(zoo.SEED_MODELS["B/16"], sha256="ab" * 32)
  monkeypatch.setitem(zoo.SEED_MODELS, "B/16", known)
  assert zoo.resolve("B/16").sha256 == "ab" * 32


def test_resolve_seed_name():
  r = zoo.resolve("B/16")
  assert r.source == ("gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1"
                      "-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz")
  assert r.config == configs.get_config("B/16")
  assert (r.image_size, r.label_set) == (224, "imagenet2012")
  assert zoo.resolve("R26+S/32-medium").config == configs.get_config("R26+S/32")


@pytest.mark.parametrize("spelling", [FINETUNED_384, FINETUNED_384 + ".npz"])
def test_resolve_augreg_name(spelling):
  r = zoo.resolve(spelling)
  assert r.source == f"gs://vit_models/augreg/{FINETUNED_384}.npz"
  assert r.config == configs.get_config("B/16")
  assert (r.image_size, r.label_set) == (384, "imagenet2012")
  assert r.augreg_name.finetuning.lr == 0.01


@pytest.mark.parametrize("name, label_set", [
    ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "imagenet21k"),
    ("B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1", "imagenet2012"),
])
def test_resolve_pretrained_only(name, label_set):
  r = zoo.resolve(name)
  assert (r.image_size, r.label_set) == (224, label_set)
  assert r.source == f"gs://vit_models/augreg/{name}.npz"


def test_urls_pass_through_with_what_the_file_name_implies():
  url = f"https://mirror.example/ckpts/{FINETUNED_384}.npz"
  r = zoo.resolve(url)
  assert r.source == url and r.config == configs.get_config("B/16") and r.image_size == 384
  plain = zoo.resolve("gs://vit_models/imagenet21k/ViT-B_16.npz")
  assert plain.source == "gs://vit_models/imagenet21k/ViT-B_16.npz" and plain.config is None


def test_local_paths_pass_through(data_dir, tmp_path):
  r = zoo.resolve(str(data_dir / "vit_a_token.npz"))
  assert r == zoo.ResolvedCheckpoint(source=str(data_dir / "vit_a_token.npz"))
  named = tmp_path / f"{FINETUNED_384}.npz"
  shutil.copy(data_dir / "vit_a_token.npz", named)
  r = zoo.resolve(str(named))
  assert r.source == str(named) and r.image_size == 384  # the local file, not the bucket


def test_unknown_names():
  with pytest.raises(FileNotFoundError, match=r"^no/such/file.npz: no such file$"):
    zoo.resolve("no/such/file.npz")
  with pytest.raises(augreg.AugregNameError, match="unknown augreg model"):
    zoo.resolve("Q_16-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0")


@pytest.mark.parametrize("name, close", [
    ("vit_base_patch16_224", ["B/16"]),  # timm's name
    ("B16", ["B/16"]), ("b/16", ["B/16"]), ("r26+s-32", ["R26+S/32"]),
    ("B/17", ["B/16"]), ("R50+L/16", ["R50+L/32", "L/16"]),
    ("vit_huge_patch14_224", []), ("resnet50", []),
])
def test_unknown_names_suggest_close_seed_names(name, close):
  with pytest.raises(zoo.UnknownCheckpointError) as e:
    zoo.resolve(name)
  assert zoo.suggestions(name) == close
  if close:
    assert f"did you mean {' or '.join(close)}?" in str(e.value)
  else:
    assert "did you mean" not in str(e.value)
  assert "python -m export.zoo list" in str(e.value)


def test_cli_resolve_unknown_name_fails(capsys):
  assert zoo_cli.main(["resolve", "vit_base_patch16_224"]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert "did you mean B/16?" in captured.err


def test_entries_list_both_kinds():
  rows = zoo.entries()
  assert len(rows) == 2 * len(SEED_TOP1)
  assert {(r["name"], r["kind"]) for r in rows} == \
      {(n, k) for n in SEED_TOP1 for k in ("classifier", "features")}
  assert rows[0]["name"] == "B/8"


def test_cli_list_and_resolve(capsys):
  assert zoo_cli.main(["list"]) == 0
  out = capsys.readouterr().out
  for name in SEED_TOP1:
    assert f"\n{name} " in out
  assert zoo_cli.main(["resolve", "S/16", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["model"] == "S/16" and info["image_size"] == 224
  assert info["url"].startswith("https://storage.googleapis.com/vit_models/augreg/S_16-")
  assert info["augreg"]["pretraining"]["aug"] == "light1"
  assert "sha256" in info and info["sha256"] == zoo.SEED_MODELS["S/16"].sha256


def test_cli_select_from_local_index(tmp_path, capsys):
  path = tmp_path / "index.csv"
  path.write_text(index_csv())
  assert zoo_cli.main(["select", "--index", str(path), "--json"]) == 0
  rows = json.loads(capsys.readouterr().out)
  assert [r["name"] for r in rows] == ["B/16", "R26+S/32", "S/16", "B/32"]
  assert set(augreg.COLUMNS) <= set(rows[0])
  assert zoo_cli.main(["select", "--index", str(path), "--resolution", "512"]) == 1


def test_cli_reports_bad_index(tmp_path, capsys):
  path = tmp_path / "index.csv"
  path.write_text(index_csv(drop=("adapt_resolution",)))
  assert zoo_cli.main(["select", "--index", str(path)]) == 2
  assert "missing column(s): adapt_resolution" in capsys.readouterr().err
