"""The shipped ImageNet-1k and ImageNet-21k class names and the default labels."""

from __future__ import annotations

import collections
import zipfile

import pytest

from export import _gen_labels, labels, zoo


def test_imagenet2012_names_in_standard_order():
  names = labels.default_labels(1000, "imagenet2012")
  assert len(names) == 1000
  assert names[0].split(", ")[0] == "tench"
  assert names[1].split(", ")[0] == "goldfish"
  assert names[207] == "golden retriever"
  assert "tabby cat" in names[281].split(", ")
  assert names[409] == "analog clock"
  assert names[950] == "orange"
  assert names[999].split(", ")[0] == "toilet tissue"
  assert all(n and n == n.strip() for n in names)
  # The two "crane" synsets (bird 134, machine 517) are the only repeat.
  repeats = [n for n, c in collections.Counter(names).items() if c > 1]
  assert repeats == ["crane"] and names[134] == names[517] == "crane"


def test_numbered_when_no_names_are_known():
  assert labels.default_labels(3) == ["class_0", "class_1", "class_2"]
  assert labels.default_labels(2, "cifar100") == ["class_0", "class_1"]


def test_imagenet21k_names_from_timms_package_data():
  names = labels.default_labels(21843, "imagenet21k")
  assert len(names) == 21843
  assert names[:3] == ["organism, being", "benthos", "heterotroph"]
  assert names[-1] == "knothole"
  assert all(n and n == n.strip() and "\t" not in n for n in names)
  # Both lists name WordNet synsets: all ImageNet-1k classes but one ("teddy,
  # teddy bear", worded differently in the 1k list) appear by the same words.
  i1k = labels.default_labels(1000, "imagenet2012")
  assert [n for n in i1k if n not in set(names)] == ["teddy, teddy bear"]
  assert zoo.resolve("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
                     ).label_set == "imagenet21k"


def test_generator_reads_the_two_files_from_a_wheel(tmp_path):
  synsets = [f"n{i:08d}" for i in range(_gen_labels.NUM_CLASSES)]
  wheel = tmp_path / "timm-0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("timm/data/_info/imagenet21k_goog_synsets.txt", "\n".join(synsets) + "\n")
    z.writestr("timm/data/_info/imagenet_synset_to_lemma.txt",
               "n99999999\tunused\n" + "".join(f"{s}\tname {s}, other\n"
                                                for s in reversed(synsets)))
  text = _gen_labels.labels_from_wheel(wheel)
  assert text.splitlines()[:2] == ["name n00000000, other", "name n00000001, other"]
  assert len(text.splitlines()) == _gen_labels.NUM_CLASSES
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("timm/data/_info/imagenet21k_goog_synsets.txt", "\n".join(synsets) + "\n")
    z.writestr("timm/data/_info/imagenet_synset_to_lemma.txt", "n00000000\tonly one\n")
  with pytest.raises(ValueError, match="no lemmas for 21842 synsets"):
    _gen_labels.labels_from_wheel(wheel)


def test_wrong_class_count_for_a_known_label_set():
  with pytest.raises(ValueError, match="has 1000 classes but the checkpoint has 10"):
    labels.default_labels(10, "imagenet2012")
