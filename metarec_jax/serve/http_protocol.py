"""uvicorn's HTTP protocol, with the API's error shape for what it refuses.

A request that cannot be parsed as HTTP (a garbled request line, a
`Content-Length` that is not a number, a broken chunked body) never reaches
the app: uvicorn answers it itself, `400` with the plain text "Invalid HTTP
request received.". Every other error of the API is `{"error": "one
line"}`, so a client that reads that shape would fail on these. This
protocol sends the same status with the JSON body; everything else is
uvicorn's (`httptools`, the parser the server runs on).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class JsonErrorsProtocol(HttpToolsProtocol):
  """`HttpToolsProtocol` whose own 400 answers are `{"error": ...}`."""

  def send_400_response(self, msg: str) -> None:
    body = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
    head = [b"HTTP/1.1 400 Bad Request\r\n"]
    for name, value in self.server_state.default_headers:
      head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\n",
             b"content-length: %d\r\n" % len(body),
             b"connection: close\r\n\r\n"]
    self.transport.write(b"".join(head) + body)
    self.transport.close()
