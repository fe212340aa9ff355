"""Bearer tokens from a file the operator rotates without a restart.

The file holds one token per line, optionally ``name token`` (the name may appear in logs and
metrics; the token never does), with ``#`` comments and blank lines ignored. :class:`TokenFile`
re-reads it when its modification time or size changes, checking at most once a second, so a
rotation takes effect within about a second and costs a ``stat`` a second, not one a call.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from dataclasses import dataclass

#: How often the file's metadata is checked for a change, seconds.
RELOAD_INTERVAL_S = 1.0


class TokenError(ValueError):
    """The token file cannot be used; the message says why (never quoting a token)."""


@dataclass(frozen=True, slots=True)
class Token:
    """One accepted token and the name it is logged under."""

    name: str
    secret: bytes


def read_tokens(path: str) -> list[Token]:
    """The tokens of ``path``.

    Raises:
        TokenError: unreadable, empty, a line with more than two fields, or a duplicate name.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenError(f"cannot read {path}: {e}") from None
    tokens: list[Token] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 2:
            raise TokenError(f"{path}:{number}: expected 'token' or 'name token'")
        name, secret = (fields[0], fields[1]) if len(fields) == 2 else (f"token{number}", fields[0])
        if any(t.name == name for t in tokens):
            raise TokenError(f"{path}:{number}: the name {name!r} is used twice")
        tokens.append(Token(name, secret.encode()))
    if not tokens:
        raise TokenError(f"{path} holds no token")
    return tokens


class TokenFile:
    """The accepted tokens of a file, kept current (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._tokens = read_tokens(path)
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size

    def _current(self) -> list[Token]:
        now = time.monotonic()
        if now - self._checked < RELOAD_INTERVAL_S:
            return self._tokens
        with self._lock:
            self._checked = now
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self._tokens, self._stamp = read_tokens(self.path), stamp
            except (OSError, TokenError):
                pass  # a file mid-rewrite or gone: keep the last good tokens
        return self._tokens

    def match(self, presented: str) -> str | None:
        """The name of the token equal to ``presented``, or None.

        Every token is compared, each in constant time, so the time taken tells nothing about
        which token (or which prefix) came close.
        """
        given = presented.encode()
        found = None
        for token in self._current():
            if hmac.compare_digest(token.secret, given):
                found = token.name
        return found
