"""sso.garmin.com's mobile JSON sign-in: the sign-in page (sets the SSO cookie), the login,
the MFA code check, and the service ticket both hand out."""

from __future__ import annotations

import secrets
import time

from garmin_emulator.state import EmulatedUser, EmulatorState, SsoSession, Ticket
from garmin_emulator.wire import BadRequest, Incoming, Reply, html_reply, json_reply

SSO_COOKIE = "GARMIN-SSO-CUST-GUID"
TICKET_TTL_SECONDS = 300.0


def _sso_status(kind: str, http_status: str = "OK") -> dict[str, str]:
    return {"type": kind, "message": "", "httpStatus": http_status}


class Sso:
    """The SSO endpoints, over the shared state."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def sign_in(self, request: Incoming) -> Reply:
        session_id = secrets.token_urlsafe(24)
        self._state.remember(session_id)
        with self._state.lock:
            self._state.sso_sessions[session_id] = SsoSession(session_id)
        reply = html_reply("GARMIN Authentication Application")
        # Secure like Garmin's, unless the client really speaks plain HTTP to us.
        secure = "; Secure" if request.original_url.startswith("https://") else ""
        reply.headers.append(("Set-Cookie", f"{SSO_COOKIE}={session_id}; Path=/{secure}; HttpOnly"))
        return reply

    def embed(self, _request: Incoming) -> Reply:
        return html_reply("GARMIN SSO")

    def login(self, request: Incoming) -> Reply:
        body = request.json_object()
        if not request.query.get("clientId") or not request.query.get("service"):
            raise BadRequest("clientId and service are required")
        session = self._session(request)
        if session is None:
            # Real Garmin needs the sign-in page's cookies first.
            return json_reply(403, {"responseStatus": _sso_status("INVALID_SESSION", "FORBIDDEN")})
        email, password = body.get("username"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise BadRequest("username and password are required")
        with self._state.lock:
            user = self._state.users.get(email.lower())
            if user is None or not secrets.compare_digest(
                user.password.encode(), password.encode()
            ):
                status = _sso_status("INVALID_USERNAME_PASSWORD", "UNAUTHORIZED")
                return json_reply(401, {"responseStatus": status})
            if user.mfa:
                session.pending_mfa_email = user.email.lower()
                return json_reply(
                    200,
                    {
                        "responseStatus": _sso_status("MFA_REQUIRED"),
                        "customerMfaInfo": {
                            "mfaLastMethodUsed": user.mfa_method,
                            "email": user.email,
                        },
                    },
                )
            ticket = self._new_ticket(user, via_mfa=False)
        return self._ticket_reply(ticket, request)

    def verify_mfa(self, request: Incoming) -> Reply:
        body = request.json_object()
        session = self._session(request)
        with self._state.lock:
            pending = session.pending_mfa_email if session is not None else None
            if session is None or pending is None:
                # The code is bound to the SSO cookie of the login that asked for it.
                return json_reply(
                    401, {"responseStatus": _sso_status("INVALID_SESSION", "UNAUTHORIZED")}
                )
            user = self._state.users[pending]
            if body.get("mfaMethod") != user.mfa_method:
                raise BadRequest("unexpected mfaMethod")
            code = body.get("mfaVerificationCode")
            if not isinstance(code, str) or not secrets.compare_digest(
                code.encode(), user.mfa_code.encode()
            ):
                return json_reply(200, {"responseStatus": _sso_status("INVALID_MFA_CODE")})
            session.pending_mfa_email = None
            ticket = self._new_ticket(user, via_mfa=True)
        return self._ticket_reply(ticket, request)

    def _session(self, request: Incoming) -> SsoSession | None:
        session_id = request.cookies.get(SSO_COOKIE)
        with self._state.lock:
            return self._state.sso_sessions.get(session_id) if session_id else None

    def _new_ticket(self, user: EmulatedUser, *, via_mfa: bool) -> str:
        ticket = f"ST-{next(self._state.ids):07d}-{secrets.token_urlsafe(16)}-cas"
        self._state.remember(ticket)
        self._state.tickets[ticket] = Ticket(
            email=user.email.lower(), via_mfa=via_mfa, expires_at=time.time() + TICKET_TTL_SECONDS
        )
        return ticket

    def _ticket_reply(self, ticket: str, request: Incoming) -> Reply:
        return json_reply(
            200,
            {
                "responseStatus": _sso_status("SUCCESSFUL"),
                "serviceTicketId": ticket,
                "serviceURL": request.query.get("service", ""),
            },
        )
