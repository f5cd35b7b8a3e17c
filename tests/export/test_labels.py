"""The shipped ImageNet-1k class names and the default labels."""

from __future__ import annotations

import collections

import pytest

from export import labels


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
  i21k = labels.default_labels(21843, "imagenet21k")
  assert len(i21k) == 21843 and i21k[-1] == "class_21842"


def test_wrong_class_count_for_a_known_label_set():
  with pytest.raises(ValueError, match="has 1000 classes but the checkpoint has 10"):
    labels.default_labels(10, "imagenet2012")
