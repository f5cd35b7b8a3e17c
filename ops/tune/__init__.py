"""The batching and warmup tuner: `python -m ops.tune` (`vit-tune`, `make tune`).

It measures batching configurations on freshly started servers under the
project's own closed-loop load (clients.perf), reads the server's batching
metrics, and writes the best configuration as a BatchingParameters text proto
with a report (docs/tuning.md).
"""
