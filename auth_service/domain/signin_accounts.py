"""Whose sign-ins the login limit and the sign-in cooldown count: the user, and the Garmin
account the user signs in to.

Garmin locks an account (its email) that signs in too often, whichever of our users it is
signed in for: two user ids an application gave the same Garmin login must share its limit
and its cooldown. The account is known by a keyed digest of its email, never the email: a
database dump names no one, and without the key no list of addresses can be matched to it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

# The derivation label of the digest key (auth_service.crypto.Keyring.derived_keys).
ACCOUNT_KEY_LABEL = "garmin-auth sign-in account v1"
# Hex SHA-256: the width of garmin_signin_account.account_digest.
ACCOUNT_DIGEST_LENGTH = 64


@dataclass(frozen=True)
class SignInKeys:
    """The user, and the Garmin account it signs in to (None: not known, as for an MFA
    challenge stored before the account was kept with it)."""

    user_id: str
    # The account's digest under the keyring's primary entry: what a pending login keeps.
    account: str | None = None
    # Its digests under every entry, sorted (every transaction locks their rows in one order).
    accounts: tuple[str, ...] = ()

    @classmethod
    def of_challenge(cls, user_id: str, account: str | None) -> SignInKeys:
        return cls(user_id, account, () if account is None else (account,))


class SignInAccounts:
    """Turns a Login's email into the account's digests: HMAC-SHA256 under keys derived from
    each keyring entry (auth_service.crypto.Keyring.derived_keys, primary first), the same on
    every replica that holds the same ring.

    A key rotation adds an entry to every replica before any promotes it, so during the
    promotion, when replicas disagree on the primary, each still counts and checks the
    account under every digest the others use: its limit and cooldown hold across the
    rotation.
    """

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        # No key: one of this process's own (tests, tools), never shared with another.
        self._keys = tuple(keys) or (secrets.token_bytes(32),)

    def __repr__(self) -> str:
        return f"SignInAccounts(<{len(self._keys)} keys>)"

    def keys(self, user_id: str, email: str) -> SignInKeys:
        # Garmin's sign-in takes an email in any letter case: one account, one digest.
        normalized = email.strip().casefold().encode("utf-8", "surrogatepass")
        digests = [hmac.new(key, normalized, hashlib.sha256).hexdigest() for key in self._keys]
        return SignInKeys(user_id, digests[0], tuple(sorted(digests)))
