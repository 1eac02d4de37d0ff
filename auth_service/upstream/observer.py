"""How every provider's requests to Garmin reach the service's metrics: garmin_client's
request observer, forwarding to the listener of the RPC in progress."""

from __future__ import annotations

from auth_service.domain.events import service_events


class RpcListenerObserver:
    """Forwards each request to the listener of the RPC in progress, looked up per request:
    several replicas in one process each count their own, and requests made outside an RPC
    are counted by nobody."""

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        service_events().upstream_call(endpoint, outcome, seconds)
