"""A stand-in REST server for client tests: answers every GET/POST with one
JSON body and status (or a body per path), recording what it was sent."""

from __future__ import annotations

import http.server
import json
import ssl
import threading


class FakeHttpServer:
  """Serves on 127.0.0.1 (over TLS when given a `context`); `requests` holds
  each request's lower-cased headers and raw body, `calls` their count.
  `gather` > 0 holds every answer until that many requests are in flight,
  to prove a client sends them concurrently."""

  def __init__(self, answer: dict, *, status: int = 200,
               by_path: dict[str, dict] | None = None, gather: int = 0,
               context: ssl.SSLContext | None = None):
    self.requests: list[tuple[dict[str, str], bytes]] = []
    self._barrier = threading.Barrier(gather, timeout=10) if gather else None
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if fake._barrier is not None:
          fake._barrier.wait()
        data = json.dumps((by_path or {}).get(self.path, answer)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      do_GET = do_POST = _answer

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
      self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
    self.port = self.server.server_address[1]
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  @property
  def calls(self) -> int:
    return len(self.requests)

  def stop(self) -> None:
    self.server.shutdown()
    self.server.server_close()
