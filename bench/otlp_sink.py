"""An OTLP/HTTP endpoint that takes every export and throws it away, for timing tracing on.

    python bench/otlp_sink.py 4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python bench/accept.py --systems conveyor

It answers each `POST /v1/traces` 200 at once without decoding it (tests/support/otlp.py
decodes every span, which would take CPU from the servers measured), and on SIGTERM or Ctrl-C
prints how many exports and bytes it took.
"""

from __future__ import annotations

import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any


class Sink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.exports = 0
        self.bytes = 0
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the exporter's session keeps its connection
    server: Sink

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(size)
        with self.server.lock:
            self.server.exports += 1
            self.server.bytes += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    sink = Sink(int(sys.argv[1]) if len(sys.argv) > 1 else 4318)

    def stop(signum: int, frame: FrameType | None) -> None:
        print(f"otlp sink: {sink.exports:,} exports, {sink.bytes / 1e6:.1f} MB", flush=True)
        threading.Thread(target=sink.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.serve_forever()


if __name__ == "__main__":
    main()
