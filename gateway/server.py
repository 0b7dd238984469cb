"""The HTTP server protocol: uvicorn's httptools protocol, answering unparseable requests
(for example both Content-Length and Transfer-Encoding, RFC 9112 §6.3) with problem+json
like every other error of the gateway."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = json.dumps({
    "type": "urn:stepgate:problem:bad-framing", "title": "Bad request", "status": 400,
    "detail": "the HTTP request is malformed (its framing could be read two ways, or it "
              "does not parse)"}).encode()


class GatewayHttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        self.transport.write(b"".join([
            b"HTTP/1.1 400 Bad Request\r\n",
            b"content-type: application/problem+json\r\n",
            b"cache-control: no-store\r\n",
            b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            _BODY,
        ]))
        self.transport.close()
