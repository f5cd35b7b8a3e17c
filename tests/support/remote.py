"""Whether the serving tests run against a real tensorflow_model_server.

TF_SERVING_GRPC=host:port and TF_SERVING_REST=host:port point the API tests
at a real server (see tests/serving/conftest.py); tests that change the
server's files or flags can only run against the embedded one.
"""

import os

import pytest

REMOTE_GRPC = os.environ.get("TF_SERVING_GRPC")
REMOTE_REST = os.environ.get("TF_SERVING_REST")
needs_embedded = pytest.mark.skipif(
    bool(REMOTE_GRPC or REMOTE_REST),
    reason="changes the server's files or flags: embedded server only")
