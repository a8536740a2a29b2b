"""What every page of ours shares, whichever blueprint serves it (``views``, ``oidc``): the
security headers and where a sign-in may send the browser next."""
import re
from urllib.parse import urlsplit

from flask import current_app, url_for

# what a redirect target may hold: printable ASCII, no space or backslash (browsers drop
# tabs and newlines from URLs, so "/\t/evil.example" would become "//evil.example")
_NEXT_CHARS = re.compile(r"[!-\[\]-~]*\Z")
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; "
       "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


def safe_next(target):
    """Only a local path, else ``/``: never an open redirect, never a header injection."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or not _NEXT_CHARS.match(target)):
        return url_for("views.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("views.index")
    return target


def csp():
    """The pages' CSP. With OpenID Connect, forms may also lead to the provider's origin:
    signing out (a form) is redirected to its sign-out page, and ``form-action`` holds
    for a form's redirects too."""
    settings = current_app.config.get("OIDC")
    if settings is None:
        return CSP
    parts = urlsplit(settings["issuer"])
    return CSP.replace("form-action 'self'", f"form-action 'self' {parts.scheme}://{parts.netloc}")


def page_headers(response):
    """The pages' security headers (``after_request`` of the page blueprints)."""
    response.headers.setdefault("Content-Security-Policy", csp())
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response
