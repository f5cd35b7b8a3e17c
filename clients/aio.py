"""asyncio clients with the sync clients' API: `await client.predict(...)`.

For services that already run an event loop (aiohttp, FastAPI, grpc.aio
servers): a blocking client there would stall every other request, or need a
thread per call. `AsyncGrpcClient` is grpc.aio; `AsyncRestClient` is aiohttp
(the [aio] extra: `pip install 'vit-serving[aio]'`). Requests, responses,
retries (one deadline per request), batching, TLS, headers and errors are the
sync clients' own code (clients.base, grpc_client, rest_client), so both
kinds behave the same; only the waiting differs. Channels and sessions are
made on first use, on the loop that uses them; `await client.close()` (or
`async with`) releases them.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import os
import ssl
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from clients import batching, grpc_client, rest_client
import contract
from contract import protos
from clients.base import ENCODED, IMAGES, PIXELS, Call, Client, Common, Headers, ModelRef
from clients.batching import DEFAULT_BATCH_SIZE
from clients.connection import Tls
from clients.errors import ClientError
from clients.results import (ModelMetadata, Prediction, SignatureInfo, VersionStatus,
                             status_from_proto)
from clients.retry import RetryPolicy, acall_with_retries


class AsyncClient(Common, abc.ABC):
  """clients.base.Client, awaited: the same methods, arguments and results.

  The public methods carry Client's docstrings (`_document`), so the API
  is described once; tests/clients/test_aio_api.py checks that the names,
  parameters and docstrings match. `reload_config` (GrpcClient's) has no
  async twin on purpose: it is an operator's action, which the rollout tool
  (ops/rollout.py) takes synchronously from a command line while it waits
  for the load, not something a service does from its event loop.
  """

  @abc.abstractmethod
  async def _predict(self, model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
                     call: Call) -> Prediction:
    """One Predict request."""

  @abc.abstractmethod
  async def _metadata(self, model: ModelRef, call: Call) -> ModelMetadata:
    """GetModelMetadata."""

  @abc.abstractmethod
  async def _status(self, model: ModelRef, call: Call) -> list[VersionStatus]:
    """GetModelStatus, newest version first."""

  @abc.abstractmethod
  async def _live(self, call: Call) -> bool:
    """Whether the server answers at all (one attempt)."""

  async def close(self) -> None:
    pass  # the transports release theirs

  async def predict(self, model: str, inputs: Mapping[str, Any], *,
                    version: int | None = None, label: str | None = None,
                    signature: str = contract.DEFAULT.name, batch_size: int | None = None,
                    progress: bool | None = None, timeout: float | None = None,
                    headers: Headers | None = None,
                    output_filter: Sequence[str] | None = None) -> Prediction:
    ref = ModelRef(model, version, label)
    call = self._call(timeout, headers, output_filter)
    arrays, n = self._arrays(inputs)
    plan = self._plan(n, batch_size, progress, model)
    result = await batching.arun_batched(
        lambda rows: self._predict(ref, signature, {k: a[rows] for k, a in arrays.items()}, call),
        plan)
    self._learn(plan)
    return result

  async def predict_images(self, model: str, images: np.ndarray, **kwargs: Any) -> Prediction:
    return await self.predict(model, self._images(images), signature=IMAGES.name, **kwargs)

  async def predict_pixels(self, model: str, pixels: np.ndarray, **kwargs: Any) -> Prediction:
    return await self.predict(model, self._pixels(pixels), signature=PIXELS.name, **kwargs)

  async def predict_encoded(self, model: str, images: Sequence[bytes | str | os.PathLike], *,
                            version: int | None = None, label: str | None = None,
                            batch_size: int | None = None, progress: bool | None = None,
                            timeout: float | None = None, headers: Headers | None = None,
                            output_filter: Sequence[str] | None = None) -> Prediction:
    ref = ModelRef(model, version, label)
    call = self._call(timeout, headers, output_filter)
    sources = list(images)
    plan = self._plan(len(sources), batch_size, progress, model)
    result = await batching.arun_batched(
        lambda rows: self._predict(ref, ENCODED.name, self._encoded(sources, rows), call), plan)
    self._learn(plan)
    return result

  async def metadata(self, model: str, *, version: int | None = None,
                     label: str | None = None, timeout: float | None = None,
                     headers: Headers | None = None) -> ModelMetadata:
    return await self._metadata(ModelRef(model, version, label), self._call(timeout, headers))

  async def status(self, model: str, *, version: int | None = None,
                   timeout: float | None = None,
                   headers: Headers | None = None) -> list[VersionStatus]:
    return await self._status(ModelRef(model, version), self._call(timeout, headers))

  async def image_size(self, model: str, *, version: int | None = None,
                       label: str | None = None) -> int:
    return (await self.metadata(model, version=version, label=label)).image_size()

  async def is_server_live(self, *, timeout: float | None = None,
                           headers: Headers | None = None) -> bool:
    return await self._live(self._call(timeout, headers))

  async def is_model_ready(self, model: str, *, version: int | None = None,
                           label: str | None = None, timeout: float | None = None,
                           headers: Headers | None = None) -> bool:
    call = self._call(timeout, headers)
    try:
      if label is not None:
        version = (await self._metadata(ModelRef(model, label=label), call)).version
      return self._ready(await self._status(ModelRef(model, version), call))
    except ClientError as e:
      if self._not_ready(e, label):
        return False
      raise

  async def __aenter__(self) -> AsyncClient:
    return self

  async def __aexit__(self, *exc: Any) -> None:
    await self.close()


class AsyncGrpcClient(AsyncClient):
  """GrpcClient on grpc.aio; the same arguments."""

  transport = "grpc"

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, headers: Headers | None = None,
               compression: bool = False, tls: Tls | bool | None = None,
               credentials: grpc.ChannelCredentials | None = None,
               max_message_bytes: int = grpc_client.DEFAULT_MAX_MESSAGE_BYTES):
    address, self._options, self._credentials = grpc_client.channel_args(
        target, tls, credentials, max_message_bytes)
    super().__init__(address, timeout=timeout, retry=retry, batch_size=batch_size,
                     headers=headers, compression=compression)
    self._channel: grpc.aio.Channel | None = None

  def _stub(self, method: protos.Method) -> Any:
    if self._channel is None:
      gzip = grpc.Compression.Gzip if self.compression else None
      self._channel = (
          grpc.aio.secure_channel(self.target, self._credentials, self._options, gzip)
          if self._credentials else
          grpc.aio.insecure_channel(self.target, self._options, gzip))
    return self._channel.unary_unary(method.path, request_serializer=method.request_serializer,
                                     response_deserializer=method.response_deserializer)

  async def close(self) -> None:
    if self._channel is not None:
      await self._channel.close()
      self._channel = None

  async def _predict(self, model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
                     call: Call) -> Prediction:
    request = grpc_client.predict_request(model, signature, inputs, call)
    response = await self._rpc(protos.PREDICT, request,
                               f"Predict {model} signature {signature!r}", call)
    return grpc_client.prediction(response, inputs)

  async def _metadata(self, model: ModelRef, call: Call) -> ModelMetadata:
    response = await self._rpc(protos.GET_MODEL_METADATA, grpc_client.metadata_request(model),
                               f"GetModelMetadata {model}", call)
    return grpc_client.metadata_result(response, model)

  async def _status(self, model: ModelRef, call: Call) -> list[VersionStatus]:
    return status_from_proto(await self._rpc(
        protos.GET_MODEL_STATUS, grpc_client.status_request(model),
        f"GetModelStatus {model}", call))

  async def _live(self, call: Call) -> bool:
    try:
      response = await self._stub(protos.HEALTH_CHECK)(
          protos.HealthCheckRequest(), timeout=call.timeout, metadata=call.headers or None)
      return response.status == protos.SERVING
    except grpc.RpcError as e:
      return grpc_client.live_after(
          grpc_client.error(e, call.timeout, f"Health/Check at {self.url}"))

  async def _rpc(self, method: protos.Method, request: Any, what: str, call: Call) -> Any:
    stub = self._stub(method)
    where = f"{what} at {self.url}"

    async def attempt(seconds: float) -> Any:
      try:
        return await stub(request, timeout=seconds, metadata=call.headers or None)
      except grpc.RpcError as e:
        raise grpc_client.error(e, call.timeout, where) from e

    return await acall_with_retries(self.retry, call.timeout, attempt)


class AsyncRestClient(AsyncClient):
  """RestClient on aiohttp (one pooled session); the same arguments."""

  transport = "rest"

  def __init__(self, target: str, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, headers: Headers | None = None,
               compression: bool = False, tls: Tls | bool | None = None,
               resolve_versions: bool = False):
    self.endpoint, self._ssl = rest_client.endpoint_and_context(target, tls)
    super().__init__(self.endpoint.address, timeout=timeout, retry=retry,
                     batch_size=batch_size, headers=headers, compression=compression)
    self.url = self.endpoint.url
    self.resolve_versions = resolve_versions
    self._session: Any = None
    self._signatures: dict[tuple[str, str], SignatureInfo] = {}

  async def close(self) -> None:
    if self._session is not None:
      await self._session.close()
      self._session = None

  async def _predict(self, model: ModelRef, signature: str, inputs: dict[str, np.ndarray],
                     call: Call) -> Prediction:
    if self.resolve_versions and model.version is None:
      resolved = await self._metadata(ModelRef(model.name, label=model.label), call)
      model = ModelRef(model.name, resolved.version)
    key = (model.name, signature)
    if key not in self._signatures:
      signatures = (await self._metadata(model, call)).signatures
      self._signatures.update({(model.name, k): v for k, v in signatures.items()})
    outputs_info = rest_client.signature_info(self._signatures, model, signature,
                                              self.url).outputs
    what = f"Predict {model} signature {signature!r}"
    answer = await self._request("POST", rest_client.path(model, ":predict"),
                                 rest_client.predict_body(signature, inputs), what, call)
    return rest_client.prediction(answer, outputs_info, model, inputs, call,
                                  f"{what} at {self.url}")

  async def _metadata(self, model: ModelRef, call: Call) -> ModelMetadata:
    what = f"GetModelMetadata {model}"
    answer = await self._request("GET", rest_client.path(model, "/metadata"), None, what, call)
    return rest_client.metadata_result(answer, model, f"{what} at {self.url}")

  async def _status(self, model: ModelRef, call: Call) -> list[VersionStatus]:
    return rest_client.status_result(await self._request(
        "GET", rest_client.path(model, ""), None, f"GetModelStatus {model}", call))

  async def _live(self, call: Call) -> bool:
    where = f"GET {rest_client.LIVE_PATH} at {self.url}"
    try:
      status, _ = await self._exchange("GET", rest_client.LIVE_PATH, None, call.headers,
                                       call.timeout)
    except ClientError as e:
      return rest_client.live_after(e)
    except Exception as e:  # noqa: BLE001  (aiohttp's errors are mapped in _failure)
      return rest_client.live_after(_failure(e, call.timeout, where))
    return status < 500

  async def _request(self, method: str, url_path: str, body: Any, what: str,
                     call: Call) -> Any:
    where = f"{what} at {self.url}{url_path}"
    payload, headers = rest_client.encode(body, call.headers, self.compression)

    async def attempt(seconds: float) -> Any:
      try:
        status, data = await self._exchange(method, url_path, payload, headers, seconds)
      except Exception as e:  # noqa: BLE001  (aiohttp's errors are mapped in _failure)
        raise _failure(e, call.timeout, where) from e
      return rest_client.decode(status, data, where)

    return await acall_with_retries(self.retry, call.timeout, attempt)

  async def _exchange(self, method: str, url_path: str, payload: bytes | None,
                      headers: Any, seconds: float) -> tuple[int, bytes]:
    import aiohttp
    if self._session is None:
      self._session = aiohttp.ClientSession(
          connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl if self._ssl else False))
    async with self._session.request(method, self.url + url_path, data=payload,
                                     headers=dict(headers),
                                     timeout=aiohttp.ClientTimeout(total=seconds)) as response:
      return response.status, await response.read()


def _failure(e: BaseException, timeout: float, where: str) -> ClientError:
  """rest_client.transport_error for aiohttp's exceptions."""
  import aiohttp
  if isinstance(e, ClientError):
    return e
  if isinstance(e, asyncio.TimeoutError):
    return rest_client.transport_error(TimeoutError(), timeout, where)
  if isinstance(e, (aiohttp.ClientSSLError, ssl.SSLError)):
    cause = getattr(e, "os_error", None) or getattr(e, "certificate_error", None) or e
    return rest_client.transport_error(
        cause if isinstance(cause, ssl.SSLError) else ssl.SSLError(str(e)), timeout, where)
  if isinstance(e, (aiohttp.ClientError, OSError)):
    if isinstance(e, aiohttp.ClientResponseError) and not rest_client.answered_in_http2(e):
      return ClientError("UNAVAILABLE", f"bad response: {e.message}", where)
    return rest_client.transport_error(e, timeout, where)
  raise e


def _document(aio: type, sync: type) -> None:
  """Gives the public methods of `aio` the docstrings of `sync`'s methods of
  the same names, so each is written once."""
  for name, method in vars(aio).items():
    if not name.startswith("_") and inspect.iscoroutinefunction(method):
      method.__doc__ = inspect.getdoc(getattr(sync, name))


_document(AsyncClient, Client)
_document(AsyncGrpcClient, grpc_client.GrpcClient)
_document(AsyncRestClient, rest_client.RestClient)
