"""People sign in with OpenID Connect: the authorization code flow with PKCE (S256), by
Authlib's Flask client (``authlib.integrations.flask_client.OAuth``), the provider found by
discovery (``<issuer>/.well-known/openid-configuration``).

- ``GET /auth/oidc/login?next=/queue``: to the provider. Authlib makes the state, the
  nonce and the PKCE verifier and keeps them in this browser's (signed, HttpOnly) cookie.
- ``GET /auth/oidc/callback``: Authlib checks the state, trades the code (with the
  verifier and the client secret) for tokens and verifies the ID token: signature (the
  provider's published keys), issuer, audience, expiry and the nonce it sent. The claims
  of the userinfo endpoint join the ID token's (same ``sub``) where the provider puts the
  groups. ``quaero.oidc.role_for`` then gives a role or refuses (403 page, audit line);
  a role starts a server-side session (``auth.sign_in``) and the browser goes to ``next``
  (a local path only).
- Errors from the provider (``error=access_denied``), a state that is not this browser's,
  a code or ID token that does not verify: a 4xx page saying so, nothing signed in. A
  provider that cannot be reached: 502.
- Signing out (``views.logout``) ends the server session and, when the provider has an
  ``end_session_endpoint`` (and ``QUAERO_OIDC_PROVIDER_LOGOUT`` is not off), goes there
  too (:func:`provider_logout_url`).

Without ``QUAERO_OIDC_ISSUER`` these routes answer 404, and Authlib is never imported
(``oidc_client``: only once it is configured, not at each worker's start). Routes are
named in ``access.ROUTE_NEEDS`` (public: they have their own rules).
"""
import logging

from flask import Blueprint, abort, current_app, redirect, render_template, request, session

from .. import oidc
from . import oidc_client
from .auth import audit, oidc_settings, sign_in
from .oidc_client import MARK_KEY, ProviderMismatch, external
from .pages import page_headers, safe_next

log = logging.getLogger("quaero")
bp = Blueprint("oidc", __name__, url_prefix="/auth/oidc")
NEXT_KEY = "oidc_next"        # in the cookie between login and callback: where to go after
STATE_PREFIX = "_state_oidc_"  # Authlib's key for a sign-in in progress (its client's name)


def init_app(app):
    app.register_blueprint(bp)
    oidc_client.init_app(app)


def _configured():
    if oidc_settings() is None:
        abort(404)
    return oidc_settings()


def _page(status, title, text, who=None):
    response = current_app.make_response((render_template(
        "signin_problem.html", page="error", code=status, title=title, text=text, who=who,
        provider=oidc_settings()["name"]), status))
    return page_headers(response)


@bp.get("/login")
def login():
    _configured()
    import requests
    session[NEXT_KEY] = safe_next(request.args.get("next"))
    try:
        return oidc_client.client().authorize_redirect(external("oidc.callback"))
    except (requests.RequestException, ValueError, ProviderMismatch) as exc:
        log.warning("OpenID Connect: the provider's discovery document: %s", exc)
        return _page(502, "The identity provider cannot be reached",
                     "Quaero could not read the identity provider's configuration. "
                     "Try again in a moment; if it persists, tell whoever runs Quaero.")


@bp.get("/callback")
def callback():
    settings = _configured()
    import requests
    from authlib.common.errors import AuthlibBaseError
    from authlib.integrations.base_client import MismatchingStateError, OAuthError
    from joserfc.errors import JoseError
    nxt = safe_next(session.pop(NEXT_KEY, None))
    error = request.args.get("error")
    if error:
        started = _flow_started(request.args.get("state"))
        _drop_flow()
        if started:    # the provider's answer to a sign-in begun here (not anyone's link)
            audit("sign-in-failed", f"was not signed in by the provider ({error[:60]})",
                  who="anonymous", error=error[:60])
        return _page(403 if error == "access_denied" else 400,
                     "Sign-in was not completed",
                     f"{settings['name']} did not sign you in ({error[:60]}"
                     + (f": {request.args.get('error_description', '')[:200]}"
                        if request.args.get("error_description") else "") + ").")
    if not _flow_started(request.args.get("state")):    # before asking the provider anything
        return _refused_flow("this sign-in did not start in this browser, or it expired")
    issuer = request.args.get("iss")
    if issuer is not None and issuer.rstrip("/") != settings["issuer"].rstrip("/"):
        return _refused_flow("the answer names another issuer")       # RFC 9207 mix-up
    try:
        client = oidc_client.client()
        token = client.authorize_access_token()
        claims = token.get("userinfo")
        if claims is None:            # no ID token: nothing verified says who this is
            return _refused_flow("the provider sent no ID token")
        claims = dict(claims)
        if client.server_metadata.get("userinfo_endpoint"):
            more = dict(client.userinfo(token=token))
            if more.get("sub") == claims.get("sub"):
                claims = {**more, **claims}
    except MismatchingStateError:
        return _refused_flow("this sign-in did not start in this browser, or it expired")
    except (OAuthError, JoseError, AuthlibBaseError) as exc:
        return _refused_flow(f"the provider's answer did not verify "
                             f"({exc.__class__.__name__})")
    except (requests.RequestException, ValueError, ProviderMismatch) as exc:
        log.warning("OpenID Connect: the provider during a sign-in: %s", exc)
        return _page(502, "The identity provider cannot be reached",
                     "Quaero could not finish the sign-in with the identity provider. "
                     "Try again in a moment.")
    subject = oidc.subject_of(claims)
    role, why = oidc.role_for(claims, settings["rules"])
    if role is None or not subject:
        _drop_flow()
        audit("sign-in-refused", f"was refused: {why}", who=subject or "anonymous",
              reason=why)
        return _page(403, "No access to Quaero",
                     f"You are signed in at {settings['name']}, but {why}: Quaero gives "
                     "you no role. Ask whoever runs Quaero to add you to a group (or the "
                     "allow-list) that gives one.", who=subject)
    sign_in(subject, role, via="oidc", reason=why)
    session[MARK_KEY] = True
    return redirect(nxt)


def _refused_flow(why):
    """A sign-in that cannot be trusted: nothing signed in, this browser's sign-in state
    dropped (not its session, if it had one: anyone can send a browser here). No audit
    line: anyone can send this; what was refused is said in the service log's warnings."""
    _drop_flow()
    log.warning("OpenID Connect: a sign-in refused: %s", why)
    return _page(400, "Sign-in failed", f"Sign-in failed: {why}. Start again from the "
                 "login page.")


def _flow_started(state):
    return bool(state) and f"{STATE_PREFIX}{state}" in session


def _drop_flow():
    """Forget this browser's sign-ins in progress (Authlib's state, nonce and verifier)."""
    session.pop(NEXT_KEY, None)
    for key in [k for k in session if k.startswith(STATE_PREFIX)]:
        session.pop(key)
