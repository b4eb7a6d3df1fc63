"""Site identity at the door. Today a per-site token (HMAC of the site id under the gateway's secret),
so a leaked token exposes one site only; the stream is bound to that site for its whole life."""

from __future__ import annotations

import hashlib
import hmac
import re

SITE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def site_token(secret: str, site_id: str) -> str:
    return hmac.new(secret.encode(), site_id.encode(), hashlib.sha256).hexdigest()


def check_site(secret: str, site_id: str | None, token: str | None) -> str | None:
    """None if the site may connect, else the reason it may not."""
    if not secret:
        return "gateway has no site token secret configured (set VPP_SITE_TOKEN_SECRET)"
    if not site_id or not SITE_ID_RE.match(site_id):
        return "metadata x-site-id missing or not a valid site id ([a-z0-9._-], max 63)"
    if not token:
        return "metadata x-site-token missing"
    if not hmac.compare_digest(site_token(secret, site_id), token):
        return "x-site-token does not match x-site-id"
    return None
