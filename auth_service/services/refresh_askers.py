"""What the single-flight refresher (auth_service.services.session_refresh) is asked and
answers: who asks (RefreshAsker), the tokens after a refresh (Refreshed), RefreshBusy,
StillRefreshingElsewhere and RefreshedWithoutAccess."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from auth_service.domain.audit import AuditedRpc, Outcome
from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import GarminTokens
from auth_service.domain.views import SessionRow


@dataclass(frozen=True)
class RefreshAsker:
    """Who asks for a refresh: the RPC its audit events name, and what a rejection stores."""

    rpc: AuditedRpc
    # The invalidated_reason stored when Garmin rejects the refresh, given Garmin's message.
    reason_for: Callable[[str], str]
    # The outcome recorded for that invalidation (None: the rejection's own answer).
    rejected_outcome: Outcome | None = None
    # Claim garth sessions too (their exchange rotates nothing, so only askers that come in
    # bursts need it: see the module docstring).
    claims_every_kind: bool = False


@dataclass(frozen=True)
class Refreshed:
    """The session's tokens after a refresh, and its row as stored with them."""

    tokens: GarminTokens
    row: SessionRow
    # False when another replica (or a login) had already replaced the tokens asked about.
    by_us: bool


class RefreshBusy(Exception):
    """Another replica holds the claim (only `refresh_unless_claimed` raises it)."""


class StillRefreshingElsewhere(GarminUnavailable):
    """Waited for another replica's claim on the session until the wait ran out. That
    replica may hold a rotated pair it has not stored yet (its database gone, say): the
    stored refresh token may be dead at Garmin already, so it is handed to no one."""


class RefreshSlotsBusy(GarminUnavailable):
    """Every refresh this replica may have in flight (GARMIN_AUTH_REFRESH_CONCURRENCY) was
    still out to Garmin when the RPC asking for one had to be answered: nothing was claimed
    or sent."""


class RefreshedWithoutAccess(GarminUnavailable):
    """The refresh rotated the session, and the rotation is stored, but Garmin's answer
    carried no access token we could read: the session's access token is expired, and its
    next use refreshes again with the refresh token stored. Nothing usable to hand out now;
    the stored refresh token is live (unlike StillRefreshingElsewhere's)."""
