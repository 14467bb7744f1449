"""Credential scrubbing: every form in which a request carries a credential (the key, the URL's
user:password and secret query values), and a filter that takes them out of streamed text."""

from __future__ import annotations

import base64
import urllib.parse
from typing import Sequence

from vlchat.config import REDACTED, secret_query_item


# Credentials shorter than this are not scrubbed from text: "abc" would mangle every answer.
MIN_SECRET_CHARS = 4


class SecretFilter:
    """Scrubs secrets from a stream of text pieces, holding back only a tail that could be the
    start of one, so a secret split across pieces is caught too."""

    def __init__(self, secrets: Sequence[str]):
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self._pending = ""

    def feed(self, piece: str) -> str:
        if not self.secrets:
            return piece
        text = self._pending + piece
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        hold = 0
        for secret in self.secrets:
            for n in range(min(len(secret) - 1, len(text)), hold, -1):
                if text.endswith(secret[:n]):
                    hold = n
                    break
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


def sent_secrets(base_url: str, api_key: str | None) -> list[str]:
    """Every credential a request to ``base_url`` carries, in each form it is sent in: the key,
    user:password (as typed, decoded, and base64 as in the Basic header), the password alone, and
    secret-looking query values (as in the URL and decoded). Longest first, so a longer one is
    scrubbed whole before a shorter one inside it."""
    found: list[str] = []
    if api_key:
        found.append(api_key)
    parts = urllib.parse.urlsplit(base_url)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        raw_user, _, raw_password = userinfo.partition(":")
        user, password = urllib.parse.unquote(raw_user), urllib.parse.unquote(raw_password)
        basic = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        found += [userinfo, f"{user}:{password}", basic, raw_password, password]
    for item in parts.query.split("&") if parts.query else ():
        name, _, value = item.partition("=")
        plain = urllib.parse.unquote_plus(value)
        if secret_query_item(urllib.parse.unquote_plus(name), plain):
            found += [value, plain, urllib.parse.quote(plain, safe="")]
    return sorted({f for f in found if len(f) >= MIN_SECRET_CHARS}, key=len, reverse=True)
