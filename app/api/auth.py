"""Who is calling the API: a login of the page's (HTTP Basic) or an API key (`Authorization: Bearer KEY` or
`X-API-Key: KEY`); the name is the owner of the jobs it submits. Without any login or key configured, only
this computer (loopback) is answered, as one owner.

Checking a login is a callable `check_login(user, password, client) -> bool` handed in (app.auth.Logins.check:
the page's logins, throttled per client), so this module parses no login file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Callable

from starlette.requests import Request

from app.auth import is_loopback, read_pairs, split_pairs
from engine.errors import SettingsError

LOCAL_OWNER = "local"  # every caller's name when no login is configured (this computer only)
MIN_KEY_LENGTH = 20


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _match(table: dict[str, bytes], secret: str) -> str | None:
    """The name whose digest equals the secret's, comparing with every entry (constant time, no early exit)."""
    digest, found = _digest(secret), None
    for name, expected in table.items():
        if hmac.compare_digest(expected, digest):
            found = name
    return found


class ApiKeys:
    """API keys from a file of NAME:KEY lines (# comments and blank lines skipped); only digests are kept."""

    def __init__(self, keys: dict[str, str]):
        self._digests = {name: _digest(key) for name, key in keys.items()}

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def from_file(cls, path) -> "ApiKeys":
        keys, seen = {}, set()
        lines = read_pairs(path, "--api-key-file", "NAME:KEY")
        for where, name, key in split_pairs(lines, "NAME:KEY", "name"):
            key = key.strip()
            if len(key) < MIN_KEY_LENGTH:
                raise SettingsError(f"{where}: the key of {name!r} is shorter than {MIN_KEY_LENGTH} characters "
                                    "(make one: python -c \"import secrets; print(secrets.token_urlsafe(32))\")")
            if key in seen:
                raise SettingsError(f"{where}: this key is already another name's")
            keys[name] = key
            seen.add(key)
        return cls(keys)

    def owner(self, key: str) -> str | None:
        return _match(self._digests, key)



class ApiAuth:
    """The FastAPI dependency (`Depends(auth.owner)`) naming the caller, or answering 401/403."""

    def __init__(self, check_login: Callable[[str, str, str], bool] | None = None, keys: ApiKeys | None = None,
                 retry_after: Callable[[str], float] | None = None):
        self.check_login = check_login
        self.keys = keys
        self.retry_after = retry_after  # seconds a client locked out after failed logins must wait

    @classmethod
    def from_args(cls, args, logins) -> "ApiAuth":
        """The page's logins (app.auth.Logins: constant-time, throttled per client) and --api-key-file."""
        keys = ApiKeys.from_file(args.api_key_file) if getattr(args, "api_key_file", None) else None
        return cls(logins.check if logins.enabled else None, keys, logins.retry_after if logins.enabled else None)

    @property
    def enabled(self) -> bool:
        return self.check_login is not None or bool(self.keys)

    def owner(self, request: Request) -> str:
        from fastapi import HTTPException

        client = request.client.host if request.client else ""
        if not self.enabled:
            if not is_loopback(client):
                raise HTTPException(403, "this server has no login configured: its API answers this computer "
                                         "only (start it with --auth, --auth-file or --api-key-file)")
            return LOCAL_OWNER
        wait = self.retry_after(client) if self.retry_after is not None else 0
        if wait > 0:
            raise HTTPException(429, f"too many failed logins from {client}: try again in {wait:.0f} s",
                                headers={"Retry-After": str(max(1, round(wait)))})
        name = self._identify(request.headers, client)
        if name is None:
            raise HTTPException(401, "a login (HTTP Basic) or an API key (Authorization: Bearer KEY) is needed, "
                                     "and the one given is not valid",
                                headers={"WWW-Authenticate": 'Basic realm="Z-Image Studio", Bearer'})
        return name

    def _identify(self, headers, client: str) -> str | None:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        key = headers.get("x-api-key") or (value.strip() if scheme.lower() == "bearer" else "")
        if key:
            return self.keys.owner(key) if self.keys else None
        if scheme.lower() == "basic" and self.check_login is not None:
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
            if sep and self.check_login(user, password, client):
                return user
        return None

