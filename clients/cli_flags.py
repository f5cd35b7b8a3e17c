"""The flags the CLI's subcommands share, and the client they describe."""

from __future__ import annotations

import argparse
from typing import Any

from clients.connection import Tls
from clients.retry import RetryPolicy


def client_options(args: argparse.Namespace) -> dict[str, Any]:
  """connect() keywords from the connection flags."""
  tls = None
  if args.tls or args.ca_cert or args.client_cert or args.client_key or args.server_name:
    tls = Tls(args.ca_cert, args.client_cert, args.client_key, args.server_name)
  headers = []
  for header in args.header:
    name, sep, value = header.partition(":")
    if not sep or not name.strip():
      raise ValueError(f"--header {header!r} is not 'Name: value'")
    headers.append((name.strip(), value.strip()))
  return {"rest": args.rest, "timeout": args.timeout, "tls": tls, "headers": headers,
          "compression": args.compression, "retry": RetryPolicy(attempts=args.attempts)}


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def positive_float(text: str) -> float:
  value = float(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {value}")
  return value


def add_connection_flags(sub: argparse.ArgumentParser) -> None:
  """The flags every subcommand shares: where, how, and how patiently."""
  sub.add_argument("--server", required=True,
                   help="HOST[:PORT] (default port 8500, or 8501 with --rest), or for REST "
                        "an http(s):// URL")
  sub.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
  sub.add_argument("--timeout", type=positive_float, default=30.0,
                   help="seconds for each request, retries included (default 30)")
  sub.add_argument("--attempts", type=positive_int, default=4,
                   help="tries when the server is unavailable (with backoff)")
  sub.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="send with every request (gRPC metadata), e.g. an auth token; "
                        "repeatable")
  sub.add_argument("--compression", action="store_true",
                   help="gzip requests (gRPC compression; REST Content-Encoding)")
  tls = sub.add_argument_group("TLS")
  tls.add_argument("--tls", action="store_true",
                   help="TLS with the system's CAs (implied by https:// and the flags below)")
  tls.add_argument("--ca-cert", metavar="PEM", help="CA certificate(s) to trust")
  tls.add_argument("--client-cert", metavar="PEM", help="client certificate (mutual TLS)")
  tls.add_argument("--client-key", metavar="PEM", help="the client certificate's private key")
  tls.add_argument("--server-name", help="gRPC: check the certificate for this name")


def add_model_flags(sub: argparse.ArgumentParser, *, required: bool = True,
                    labels: bool = True) -> None:
  sub.add_argument("--model", required=required, help="model name")
  which = sub.add_mutually_exclusive_group()
  which.add_argument("--version", type=int, help="a version number")
  if labels:
    which.add_argument("--label", help="a version label, e.g. stable or canary")
