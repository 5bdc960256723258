"""The console's login: the gateway's token, as a bearer header or as a signed session cookie.

Stateless like the gateway: the cookie is ``EXPIRY.MAC`` with ``MAC = HMAC-SHA256(token,
"controlplane-console-v1:" + EXPIRY)``. Any gateway with the same token verifies it, none stores
anything, and the token itself never reaches the browser's cookie jar. Changing the token ends
every session. The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page
can send it along), limited to ``/ui``, and Secure when the gateway serves HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import time

COOKIE = "cp_console"
SESSION_S = 12 * 3600
_CONTEXT = b"controlplane-console-v1:"


def _mac(token: str, expiry: int) -> str:
    return hmac.new(token.encode("utf-8"), _CONTEXT + str(expiry).encode(), hashlib.sha256).hexdigest()


def session_cookie(token: str, now: float | None = None, lifetime_s: int = SESSION_S) -> str:
    expiry = int(now if now is not None else time.time()) + lifetime_s
    return f"{expiry}.{_mac(token, expiry)}"


def valid_session(token: str, cookie: str, now: float | None = None) -> bool:
    expiry_text, _, mac = cookie.partition(".")
    if not expiry_text.isdigit() or len(expiry_text) > 12:
        return False
    expiry = int(expiry_text)
    if expiry < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac.encode(), _mac(token, expiry).encode())


def valid_token(expected: str, presented: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def safe_next(target: str) -> str:
    """Where to go after logging in: only a path of the console itself (no open redirect)."""
    if target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"
