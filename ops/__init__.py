"""Operator tools that run beside a deployment and never import TensorFlow:
the batching tuner (`ops.tune`)."""
