"""What the service keeps of a lease id: its SHA-256 digest, never the id (issue 14).

A lease id is its holder's key to renew, refresh, report and release. Only the holder ever
sees it (in the answer to its own LeaseSession/LeaseNextSession); the database, the audit
trail and every status reader see its digest or a short reference made from that digest.

Why an unkeyed SHA-256 and not an HMAC under the keyring: a lease id carries 192 random bits,
so its digest can be neither inverted nor brute-forced, and a key would add nothing but tie
every live lease (and migration 0009, which hashes stored ids in place) to the encryption
keys and their rotation.

A holder's call is looked up by the digest of the id it presents; the row found is then
compared digest to digest in constant time (matches). A lookup's timing could at most tell
something about digests, which are worthless without a preimage.
"""

from __future__ import annotations

import hashlib
import hmac

# Hex characters of the digest shown as a lease's reference: enough to tell leases apart in
# an audit trail, far too few (and one-way anyway) to act on a lease.
LEASE_REF_LENGTH = 12


def lease_digest(lease_id: str) -> str:
    """The lowercase hex SHA-256 of a lease id: what the database stores."""
    return hashlib.sha256(lease_id.encode("utf-8")).hexdigest()


def lease_ref(digest: str) -> str:
    """A lease's non-secret reference (the digest's first characters) for status readers,
    the audit trail and logs."""
    return digest[:LEASE_REF_LENGTH]


def matches(stored_digest: str | None, lease_id: str) -> bool:
    """Whether `lease_id` is the lease whose digest is stored, compared in constant time."""
    if stored_digest is None:
        return False
    return hmac.compare_digest(stored_digest.encode(), lease_digest(lease_id).encode())
