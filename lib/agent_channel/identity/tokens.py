"""Minting and hashing of secrets. Plain tokens exist only on the wire."""

from __future__ import annotations

import hashlib
import secrets


def mint_bearer_token() -> str:
    """A user's bearer token: 256 bits, URL-safe, shown once."""
    return "act_" + secrets.token_urlsafe(32)


def mint_lease_token() -> str:
    """A lease token: 16 hex characters, as the reference minted them."""
    return secrets.token_hex(8)


def token_digest(token: str) -> str:
    """SHA-256 of a bearer token.

    A fast hash is right here: tokens carry 256 random bits, so there is nothing
    for a slow password hash to protect against, and the lookup is by digest.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
