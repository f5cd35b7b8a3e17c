"""The embedded model server: a drop-in for `tensorflow_model_server`.

`python -m serving` takes tensorflow_model_server's flags, reads the same
`ModelServerConfig`, batching and monitoring text protos and model
repositories, and speaks TF Serving's gRPC and REST APIs unchanged, so a
command line, config, client or test written for TF Serving works against it.
It needs TensorFlow (it runs SavedModels) but never JAX: it must not import
`export/`.
"""
