"""Authlib's client for the OpenID provider (``authlib.integrations.flask_client.OAuth``),
shared by the sign-in routes (``web/oidc.py``) and sign-out (``views.logout``): registered
from the settings, its discovery document checked, the provider's sign-out address.

Authlib (and requests) are imported only where OpenID Connect is configured: a server
without it, and every worker's start, does without their 0.2-0.3 s of CPU."""
import logging

from flask import current_app, url_for

from .. import oidc
from .auth import oidc_settings

log = logging.getLogger("quaero")
MARK_KEY = "oidc"             # in a person's session: signed in with the provider
TIMEOUT = 10                  # seconds for each call to the provider


class ProviderMismatch(Exception):
    """The discovery document names another issuer than the one configured."""


def init_app(app):
    """Register the provider with Authlib when OpenID Connect is configured (no network
    here: the discovery document is read on the first sign-in)."""
    settings = app.config.get("OIDC")
    if settings is None:
        return
    scopes = settings["scopes"].split()
    if "openid" not in scopes:        # the ID token (and its nonce) is what we verify
        scopes.insert(0, "openid")
    from authlib.integrations.flask_client import OAuth
    oauth = OAuth(app)
    oauth.register(
        "oidc", client_id=settings["client_id"], client_secret=settings["client_secret"],
        server_metadata_url=settings["issuer"].rstrip("/") + oidc.DISCOVERY_PATH,
        client_kwargs={"scope": " ".join(scopes), "code_challenge_method": "S256",
                       "default_timeout": TIMEOUT})
    app.extensions["quaero_oidc"] = oauth


def client():
    """Authlib's client, its discovery document read and checked (OpenID Connect
    Discovery 4.3: the document's issuer is the one configured)."""
    found = current_app.extensions["quaero_oidc"].oidc
    metadata = found.load_server_metadata()
    configured = oidc_settings()["issuer"]
    if str(metadata.get("issuer", "")).rstrip("/") != configured.rstrip("/"):
        raise ProviderMismatch(f"the provider says its issuer is {metadata.get('issuer')!r}, "
                               f"not {configured!r}")
    return found


def external(endpoint):
    """An absolute URL of ours for the provider: under ``QUAERO_PUBLIC_URL`` when set,
    else as this request reached us."""
    public = oidc_settings()["public_url"]
    if public:
        return public + url_for(endpoint)
    return url_for(endpoint, _external=True)


def provider_logout_url(was_oidc):
    """Where a person who signed in with the provider goes after signing out here: the
    provider's ``end_session_endpoint`` (RP-Initiated Logout, back to our login page), or
    None (no OIDC, turned off, no such endpoint, provider unreachable)."""
    settings = oidc_settings()
    if not was_oidc or settings is None or not settings["provider_logout"]:
        return None
    import requests
    try:
        provider = client()
        if not provider.server_metadata.get("end_session_endpoint"):
            return None
        return provider.create_logout_url(
            post_logout_redirect_uri=external("views.login"),
            client_id=settings["client_id"])["url"]
    except (requests.RequestException, ValueError, ProviderMismatch, RuntimeError) as exc:
        log.warning("OpenID Connect: no sign-out at the provider: %s", exc)
        return None
