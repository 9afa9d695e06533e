"""An OTLP/HTTP trace sink for benchmarks: answers every export with success and keeps nothing
but a count of the spans it was sent (``GET /stats``), so a run can tell that tracing was on and
whether spans were dropped.

    python bench/peers/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import gzip
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


class Sink(BaseHTTPRequestHandler):
    """Decodes each export only to count its spans."""

    spans = 0
    exports = 0
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's requests.Session expects

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        request = ExportTraceServiceRequest.FromString(raw)
        counted = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        Sink.spans += counted
        Sink.exports += 1
        self._reply(ANSWER, "application/x-protobuf")

    def do_GET(self) -> None:
        self._reply(
            json.dumps({"spans": Sink.spans, "exports": Sink.exports}).encode(), "application/json"
        )

    def _reply(self, body: bytes, media_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Sink).serve_forever()


if __name__ == "__main__":
    main()
