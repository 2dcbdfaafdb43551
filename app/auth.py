"""Logins: who may use this app (the page, its Gradio API, the HTTP job API), checked in constant time,
with failed attempts throttled per client.

    logins = Logins.from_args(auth, auth_file)    # --auth USER:PASSWORD, --auth-file FILE (either, both, none)
    logins.enabled                                 # False when neither was given: no login asked
    logins.users                                   # the user names, in the order given
    logins.check(user, password, client) -> bool   # client: who asks (the remote address); False while locked out
    logins.retry_after(client) -> float            # seconds before this client may try again (0: now)

Passwords are compared as salted digests with hmac.compare_digest, and an unknown user is compared against
a stand-in, so the answer takes the same time whoever and whatever is asked. The FREE_FAILURES-th failure of a
client locks it out for 1 s, and each failure after that for twice as long as the one before (2 s, 4 s ... up
to MAX_LOCKOUT); a success, or QUIET seconds without a failure, clears its record. While locked out, check()
answers False without looking at the password, so guessing stays slow even with the right one in the list.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SettingsError

FREE_FAILURES = 5
MAX_LOCKOUT = 300.0  # seconds
QUIET = 900.0  # seconds without a failure after which a client starts afresh
MAX_CLIENTS = 10000  # records kept at most (the oldest go first)


def read_pairs(path, flag: str, form: str) -> list[tuple[str, str]]:
    """The (where, line) of each NAME:SECRET line of a credentials file given with `flag` (blank lines and
    # comments skipped; a UTF-8 byte order mark, as Windows editors write, is not part of the first name)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise SettingsError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise SettingsError(f"{flag} {path} line {line}: not UTF-8 text; save the file as UTF-8") from None
    lines = [(f"{flag} {path} line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SettingsError(f"{flag} {path}: no {form} lines in it")
    return lines


def split_pairs(lines, form: str, noun: str) -> list[tuple[str, str, str]]:
    """(where, name, secret) of NAME:SECRET lines; a name given twice is an error."""
    pairs, where_given = [], {}
    for where, line in lines:
        name, sep, secret = line.partition(":")
        name = name.strip()
        if not sep or not name or not secret:
            raise SettingsError(f"{where}: expected {form}")
        if name in where_given:
            raise SettingsError(f"{where}: {noun} {name!r} is given again (first in {where_given[name]}); give "
                                f"each {noun} once")
        where_given[name] = where
        pairs.append((where, name, secret))
    return pairs


def parse_logins(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """USER:PASSWORD pairs from --auth and --auth-file. A user given twice is an error."""
    lines = [("--auth", auth)] if auth else []
    if auth_file:
        lines += read_pairs(auth_file, "--auth-file", "USER:PASSWORD")
    return [(user, password) for _, user, password in split_pairs(lines, "USER:PASSWORD", "user")]


@dataclass
class _Client:
    failures: int = 0
    locked_until: float = 0.0
    lockout: float = 0.0
    last_failure: float = 0.0


class Logins:
    def __init__(self, pairs: list[tuple[str, str]], clock=time.monotonic):
        self._salt = secrets.token_bytes(16)
        self._digests = {user: self._digest(password) for user, password in pairs}
        self._stand_in = self._digest(secrets.token_hex(16))
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Picklable (a Ray ingress carries it): digests travel, never passwords; failure records do not."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_clients")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _clients={})

    @classmethod
    def from_args(cls, auth: str | None, auth_file: str | None) -> "Logins":
        return cls(parse_logins(auth, auth_file))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self._digests)

    def _digest(self, password: str) -> bytes:
        return hashlib.sha256(self._salt + str(password).encode("utf-8", "surrogatepass")).digest()

    def check(self, user: str, password: str, client: str = "") -> bool:
        """True when `user` and `password` match and `client` is not locked out; failures count per client."""
        if self.retry_after(client) > 0:
            return False
        stored = self._digests.get(user if isinstance(user, str) else "")
        ok = hmac.compare_digest(self._digest(password), stored if stored is not None else self._stand_in)
        ok = ok and stored is not None
        with self._lock:
            if ok:
                self._clients.pop(client, None)
            else:
                self._failed(client)
        return ok

    def retry_after(self, client: str = "") -> float:
        with self._lock:
            record = self._clients.get(client)
            return max(0.0, record.locked_until - self._clock()) if record else 0.0

    def _failed(self, client: str) -> None:
        now = self._clock()
        record = self._clients.get(client)
        if record is None or now - record.last_failure > QUIET:
            record = self._clients[client] = _Client(last_failure=now)
            self._forget_oldest()
        record.failures += 1
        record.last_failure = now
        if record.failures >= FREE_FAILURES:
            record.lockout = min(MAX_LOCKOUT, record.lockout * 2 or 1.0)
            record.locked_until = now + record.lockout

    def _forget_oldest(self) -> None:
        if len(self._clients) > MAX_CLIENTS:
            for client, _ in sorted(self._clients.items(), key=lambda kv: kv[1].last_failure)[
                    : len(self._clients) - MAX_CLIENTS]:
                del self._clients[client]


def is_loopback(host: str) -> bool:
    """True for addresses only this computer reaches: 127.0.0.0/8, ::1 (bracketed or with a %zone too) and
    localhost in any case."""
    host = host.strip().strip("[]").split("%")[0].lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
