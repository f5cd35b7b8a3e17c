"""contract.prometheus: the one reader of a server's Prometheus text."""

from __future__ import annotations

import math

import pytest

from contract import prometheus

TEXT = r"""# HELP :tensorflow:serving:request_count The total number of requests.
# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="vit",status="OK"} 7
:tensorflow:serving:request_count{model_name="vit",status="NOT_FOUND"} 2 1700000000000
:tensorflow:serving:request_count{model_name="odd \"name\"\\x",status="OK"} 1

:tensorflow:serving:request_latency_bucket{model_name="vit",API="predict",le="+Inf"} 7
up 1.5e3
"""


def test_parse_reads_labels_values_and_escapes():
  samples = prometheus.parse(TEXT)
  assert len(samples) == 5
  assert samples[0] == prometheus.Sample(":tensorflow:serving:request_count",
                                         {"model_name": "vit", "status": "OK"}, 7.0)
  assert samples[1].value == 2.0                      # a timestamp is not the value
  assert samples[2].labels["model_name"] == 'odd "name"\\x'
  assert samples[3].labels["le"] == "+Inf"
  assert samples[4] == prometheus.Sample("up", {}, 1500.0)


def test_total_sums_the_samples_whose_labels_match():
  samples = prometheus.parse(TEXT)
  name = ":tensorflow:serving:request_count"
  assert prometheus.total(samples, name) == 10
  assert prometheus.total(samples, name, model_name="vit") == 9
  assert prometheus.total(samples, name, model_name="vit", status="OK") == 7
  assert prometheus.total(samples, "absent") == 0


def test_a_page_that_is_not_metrics_is_an_error():
  with pytest.raises(ValueError, match="line 1 is not a Prometheus sample"):
    prometheus.parse('{"error": "Not found"}')
  assert math.isnan(prometheus.parse("x NaN")[0].value)
