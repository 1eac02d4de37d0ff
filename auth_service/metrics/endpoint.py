"""The /metrics HTTP endpoint: prometheus_client's server for one replica's registry."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


@dataclass
class MetricsEndpoint:
    """prometheus_client's HTTP server on its own thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_endpoint(listen: str, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serve /metrics of `registry` on `listen` (host:port; [::]:port for IPv6)."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return MetricsEndpoint(server, thread)
