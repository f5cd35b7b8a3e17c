"""The asyncio clients have the sync clients' API: the same public methods,
each a coroutine with the same parameters, defaults, annotations and
docstring; the only sync-only method is `reload_config`, left out on purpose
(see clients.aio.AsyncClient)."""

from __future__ import annotations

import inspect

import pytest

from clients.aio import AsyncClient, AsyncGrpcClient, AsyncRestClient
from clients.base import Client
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient

TWINS = [(Client, AsyncClient), (GrpcClient, AsyncGrpcClient), (RestClient, AsyncRestClient)]
SYNC_ONLY = {"reload_config"}


def public_methods(cls: type) -> set[str]:
  return {name for name, member in inspect.getmembers(cls, inspect.isfunction)
          if not name.startswith("_")}


@pytest.mark.parametrize("sync,aio", TWINS, ids=lambda c: c.__name__)
def test_same_methods(sync, aio):
  assert public_methods(sync) - SYNC_ONLY == public_methods(aio)


@pytest.mark.parametrize("sync,aio", TWINS, ids=lambda c: c.__name__)
def test_same_parameters_and_docstrings(sync, aio):
  names = sorted(public_methods(aio))
  assert "predict" in names and "close" in names
  for name in names:
    ours, theirs = getattr(sync, name), getattr(aio, name)
    assert inspect.iscoroutinefunction(theirs), name
    assert inspect.signature(theirs) == inspect.signature(ours), name
    assert inspect.getdoc(theirs) == inspect.getdoc(ours), name
    assert inspect.getdoc(theirs), f"{name} has no docstring"


@pytest.mark.parametrize("sync,aio", TWINS[1:], ids=lambda c: c.__name__)
def test_same_constructor(sync, aio):
  assert inspect.signature(aio.__init__) == inspect.signature(sync.__init__)


def test_sync_only_methods_exist():
  # Naming one that no longer exists would let an async twin go missing unnoticed.
  assert SYNC_ONLY <= public_methods(GrpcClient)
