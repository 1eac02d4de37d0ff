"""The emulator's own HTTP endpoints under ``/__emulator/``, for a process that runs it (the
benchmarks): read the request counters, issue DI token pairs in bulk and read back what the
DI token endpoint saw. Answered at once: no latency, no faults, not counted, not Garmin's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from garmin_emulator.endpoints import DI_RECORDS_PATH, DI_TOKENS_PATH, REQUEST_COUNTS_PATH
from garmin_emulator.options import DEFAULT_DI_DOMAIN, DI_DOMAINS, KNOWN_DI_CLIENT_IDS
from garmin_emulator.wire import BadRequest, Incoming, Reply, error_reply, json_reply

if TYPE_CHECKING:
    from garmin_emulator.emulator import GarminEmulator

# Accounts one bulk request may ask pairs for (a request body is at most 1 MiB anyway).
MAX_BULK_EMAILS = 20_000


class ControlApi:
    """Answers the control paths from the emulator's own thread-safe methods."""

    def __init__(self, emulator: GarminEmulator) -> None:
        self._emulator = emulator

    def answer(self, request: Incoming) -> Reply:
        try:
            if request.method == "GET" and request.path == REQUEST_COUNTS_PATH:
                return json_reply(200, self._emulator.request_counts())
            if request.method == "GET" and request.path == DI_RECORDS_PATH:
                return json_reply(200, self._emulator.di_records())
            if request.method == "POST" and request.path == DI_TOKENS_PATH:
                return json_reply(200, self._issue(request.json_object()))
        except BadRequest as exc:
            return error_reply(400, str(exc))
        return error_reply(404, "no such control endpoint")

    def _issue(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"emails": [...], "client_id": optional, "domain": optional}``: one fresh pair
        per account from diauth.<domain> (default garmin.com), in python-garminconnect's
        ``garmin_tokens.json`` shape, in the order asked."""
        emails = body.get("emails")
        client_id = body.get("client_id", KNOWN_DI_CLIENT_IDS[0])
        domain = body.get("domain", DEFAULT_DI_DOMAIN)
        if (
            not isinstance(emails, list)
            or len(emails) > MAX_BULK_EMAILS
            or not all(isinstance(email, str) for email in emails)
        ):
            raise BadRequest(f"emails must be a list of at most {MAX_BULK_EMAILS} strings")
        if not isinstance(client_id, str) or not client_id:
            raise BadRequest("client_id must be a string")
        if domain not in DI_DOMAINS:
            raise BadRequest(f"domain must be one of {', '.join(DI_DOMAINS)}")
        known = self._emulator.known_emails()
        unknown = [email for email in emails if email.lower() not in known]
        if unknown:
            raise BadRequest(f"{len(unknown)} unknown account(s), e.g. {unknown[0]}")
        return {
            "tokens": [
                self._emulator.garminconnect_tokens(email, client_id=client_id, domain=domain)
                for email in emails
            ]
        }
