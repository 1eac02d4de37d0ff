"""sso.garmin.com's mobile JSON sign-in: the sign-in page (garth loads it first for its
cookie), the login (the DI clients post it without a page load: it then starts the SSO
session and sets its cookies), the MFA code check on those cookies, and the single-use
service ticket both hand out, bound to the service URL it was asked for."""

from __future__ import annotations

import json
import secrets
import string
import time

from garmin_emulator.options import DiOptions
from garmin_emulator.state import EmulatedUser, EmulatorState, SsoSession, Ticket
from garmin_emulator.wire import BadRequest, Incoming, Reply, html_reply, json_reply

# The sign-in page's cookie (garth's flow).
SSO_COOKIE = "GARMIN-SSO-CUST-GUID"
# The cookies a login without a page load sets: SESSION names the SSO session, CASTGC is its
# ticket-granting cookie (the MFA step must present both), the others ride along as Garmin's do.
SESSION_COOKIE = "SESSION"
CASTGC_COOKIE = "CASTGC"
GARMIN_SSO_COOKIE = "GARMIN-SSO"
CLOUDFLARE_COOKIE = "__cf_bm"
# What Garmin's edge answers a sign-in it blocks: a Cloudflare page (403) or a captcha demand.
CLOUDFLARE_BLOCK_PAGE = (
    "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head>"
    "<body>Sorry, you have been blocked</body></html>"
)
CAPTCHA_REQUIRED_BODY = json.dumps(
    {"responseStatus": {"type": "CAPTCHA_REQUIRED", "message": "", "httpStatus": "OK"}}
)
_ALNUM = string.ascii_letters + string.digits


def _sso_status(kind: str, http_status: str = "OK") -> dict[str, str]:
    return {"type": kind, "message": "", "httpStatus": http_status}


def _cookie(request: Incoming, name: str, value: str) -> tuple[str, str]:
    # Secure like Garmin's, unless the client really speaks plain HTTP to us.
    secure = "; Secure" if request.original_url.startswith("https://") else ""
    return ("Set-Cookie", f"{name}={value}; Path=/{secure}; HttpOnly")


class Sso:
    """The SSO endpoints, over the shared state."""

    def __init__(self, state: EmulatorState, options: DiOptions) -> None:
        self._state = state
        self._options = options

    def sign_in(self, request: Incoming) -> Reply:
        session_id = secrets.token_urlsafe(24)
        self._state.remember(session_id)
        with self._state.lock:
            self._state.sso_sessions[session_id] = SsoSession(session_id)
        reply = html_reply("GARMIN Authentication Application")
        reply.headers.append(_cookie(request, SSO_COOKIE, session_id))
        return reply

    def embed(self, _request: Incoming) -> Reply:
        return html_reply("GARMIN SSO")

    def login(self, request: Incoming) -> Reply:
        body = request.json_object()
        service = request.query.get("service")
        if not request.query.get("clientId") or not service:
            raise BadRequest("clientId and service are required")
        email, password = body.get("username"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise BadRequest("username and password are required")
        session = self._session(request)
        set_cookies: list[tuple[str, str]] = []
        if session is None:
            # The mobile login needs no page load: this answer starts the SSO session.
            session, set_cookies = self._start_session(request)
        reply = self._login(session, email, password, service)
        reply.headers.extend(set_cookies)
        return reply

    def _login(self, session: SsoSession, email: str, password: str, service: str) -> Reply:
        with self._state.lock:
            user = self._state.users.get(email.lower())
            if user is None or not secrets.compare_digest(
                user.password.encode(), password.encode()
            ):
                status = _sso_status("INVALID_USERNAME_PASSWORD", "UNAUTHORIZED")
                return json_reply(401, {"responseStatus": status})
            if user.mfa:
                session.pending_mfa_email = user.email.lower()
                session.pending_expires_at = time.time() + self._options.pending_mfa_ttl_seconds
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
            ticket = self.new_ticket(user, via_mfa=False, service_url=service)
        return self._ticket_reply(ticket, service)

    def verify_mfa(self, request: Incoming) -> Reply:
        body = request.json_object()
        service = request.query.get("service", "")
        session = self._session(request)
        with self._state.lock:
            if session is None or not self._pending_and_alive(session, request):
                # The code is bound to the SSO cookies of the login that asked for it.
                return json_reply(
                    401, {"responseStatus": _sso_status("INVALID_SESSION", "UNAUTHORIZED")}
                )
            assert session.pending_mfa_email is not None
            user = self._state.users[session.pending_mfa_email]
            if body.get("mfaMethod") != user.mfa_method:
                raise BadRequest("unexpected mfaMethod")
            code = body.get("mfaVerificationCode")
            if not isinstance(code, str) or not secrets.compare_digest(
                code.encode(), user.mfa_code.encode()
            ):
                # The pending login stays usable for another try.
                return json_reply(200, {"responseStatus": _sso_status("INVALID_MFA_CODE")})
            session.pending_mfa_email = None
            ticket = self.new_ticket(user, via_mfa=True, service_url=service)
        return self._ticket_reply(ticket, service)

    def _pending_and_alive(self, session: SsoSession, request: Incoming) -> bool:
        """Whether the session waits for a code, in time, with its ticket-granting cookie."""
        castgc_ok = session.castgc is None or secrets.compare_digest(
            request.cookies.get(CASTGC_COOKIE, "").encode(), session.castgc.encode()
        )
        return (
            session.pending_mfa_email is not None
            and session.pending_expires_at > time.time()
            and castgc_ok
        )

    def _session(self, request: Incoming) -> SsoSession | None:
        session_id = request.cookies.get(SESSION_COOKIE) or request.cookies.get(SSO_COOKIE)
        with self._state.lock:
            return self._state.sso_sessions.get(session_id) if session_id else None

    def _start_session(self, request: Incoming) -> tuple[SsoSession, list[tuple[str, str]]]:
        session = SsoSession(
            secrets.token_urlsafe(24),
            castgc=f"TGT-{next(self._state.ids)}-{secrets.token_urlsafe(36)}-cas",
        )
        assert session.castgc is not None
        cloudflare = secrets.token_urlsafe(32)
        self._state.remember(session.session_id, session.castgc, cloudflare)
        with self._state.lock:
            self._state.sso_sessions[session.session_id] = session
        cookies = [
            _cookie(request, SESSION_COOKIE, session.session_id),
            _cookie(request, CASTGC_COOKIE, session.castgc),
            _cookie(request, GARMIN_SSO_COOKIE, "1"),
            _cookie(request, CLOUDFLARE_COOKIE, cloudflare),
        ]
        return session, cookies

    def new_ticket(self, user: EmulatedUser, *, via_mfa: bool, service_url: str) -> str:
        """Record and return a new ticket for `user` (the caller holds the state's lock)."""
        random_part = "".join(secrets.choice(_ALNUM) for _ in range(20))
        ticket = f"ST-{next(self._state.ids):07d}-{random_part}-sso"
        self._state.remember(ticket)
        self._state.tickets[ticket] = Ticket(
            email=user.email.lower(),
            via_mfa=via_mfa,
            expires_at=time.time() + self._options.ticket_ttl_seconds,
            service_url=service_url,
        )
        return ticket

    def _ticket_reply(self, ticket: str, service: str) -> Reply:
        return json_reply(
            200,
            {
                "responseStatus": _sso_status("SUCCESSFUL"),
                "serviceTicketId": ticket,
                "serviceURL": service,
            },
        )
