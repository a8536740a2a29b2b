"""Who may sign in with OpenID Connect, and with which role: the pure rules, no I/O (the
flow itself, with Authlib, is ``web/oidc.py``).

- The provider must be reached over https; plain http only for a loopback issuer
  (``http://127.0.0.1:…``, ``http://localhost:…``: a provider on this host, or the tests').
- A person's role is the highest one any rule gives (``admin`` > ``operate`` > ``read``):
  a group named in ``QUAERO_OIDC_ADMIN_GROUPS``/``_OPERATE_GROUPS``/``_READ_GROUPS`` found
  in the claim ``QUAERO_OIDC_ROLES_CLAIM`` (default ``groups``; a list, or one text; a dotted
  name such as ``realm_access.roles`` reads a nested claim), or an entry of
  ``QUAERO_OIDC_ALLOW`` matching the person's e-mail: ``alice@example.com`` or
  ``@example.com`` (every address of the domain), ``read`` unless the entry says
  ``=operate`` or ``=admin`` (``bob@example.com=admin``). An e-mail counts only when the
  provider says it is verified (``email_verified`` true): anyone can type an address.
- Someone no rule matches is refused: never a default role.
- The subject (who the session, the audit trail and ``quaero sessions revoke`` name) is
  the verified e-mail, else the provider's ``sub``.
"""
from dataclasses import dataclass
from urllib.parse import urlsplit

from .access import ROLES

RANK = ("read", "operate", "admin")          # ascending: the highest match wins
CALLBACK_PATH = "/auth/oidc/callback"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def _words(text):
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _is_loopback_host(host):
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_problem(url):
    """Why ``url`` cannot be an issuer, or None: https, or http on a loopback host only
    (tokens and the client secret must not cross a network in the clear)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and _is_loopback_host(parts.hostname):
        return None
    return "is not an https address (plain http only for a loopback issuer)"


def parse_allow(text):
    """``QUAERO_OIDC_ALLOW`` as ``[(address or @domain, role)]``, lowered; ValueError names
    a bad entry."""
    entries = []
    for word in _words(text):
        who, _, role = word.partition("=")
        who, role = who.strip().lower(), (role.strip().lower() or "read")
        if role not in ROLES:
            raise ValueError(f"QUAERO_OIDC_ALLOW entry {word!r}: role must be read, "
                             "operate or admin")
        local, at, domain = who.rpartition("@")
        if not at or not domain or "." not in domain or " " in who:
            raise ValueError(f"QUAERO_OIDC_ALLOW entry {word!r} is not an e-mail address "
                             "or @domain")
        entries.append((who, role))
    return entries


@dataclass(frozen=True)
class RoleRules:
    """How claims become a role: the claim holding groups, the groups of each role, the
    allow-list."""
    claim: str = "groups"
    groups: tuple = ()           # ((role, frozenset of group names), ...)
    allow: tuple = ()            # ((address or @domain, role), ...)

    @classmethod
    def from_settings(cls, claim, admin_groups, operate_groups, read_groups, allow):
        groups = tuple((role, frozenset(_words(text))) for role, text in
                       (("admin", admin_groups), ("operate", operate_groups),
                        ("read", read_groups)) if _words(text))
        return cls(claim or "groups", groups, tuple(parse_allow(allow)))

    @property
    def empty(self):
        return not self.groups and not self.allow


def claim_values(claims, name):
    """The values of claim ``name`` (dotted: nested objects) as a set of text: a list of
    text, or one text (some providers send a single group as a string)."""
    value = claims
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return {value}
    if isinstance(value, (list, tuple)):
        return {v for v in value if isinstance(v, str)}
    return set()


def verified_email(claims):
    """The e-mail, lowered, when the provider says it is verified; else None."""
    email = claims.get("email")
    verified = claims.get("email_verified")
    if isinstance(verified, str):          # some providers send "true"
        verified = verified.lower() == "true"
    if isinstance(email, str) and "@" in email and verified is True:
        return email.strip().lower()
    return None


def role_for(claims, rules):
    """``(role, why)``: the highest role the rules give these claims, or ``(None, why
    not)``."""
    found = []
    groups = claim_values(claims, rules.claim)
    for role, names in rules.groups:
        if groups & names:
            found.append((role, f"group {sorted(groups & names)[0]!r}"))
    email = verified_email(claims)
    if email is not None:
        domain = "@" + email.rpartition("@")[2]
        for entry, role in rules.allow:
            if entry in (email, domain):
                found.append((role, f"allow-list entry {entry!r}"))
    if not found:
        if rules.allow and email is None and claims.get("email"):
            return None, "the provider did not say the e-mail address is verified"
        return None, "no group or allow-list entry gives a role"
    return max(found, key=lambda f: RANK.index(f[0]))


def subject_of(claims):
    """Who the session names: the verified e-mail, else ``sub``."""
    return verified_email(claims) or str(claims.get("sub") or "")[:200]


def provider_name(issuer):
    """What the login button says when ``QUAERO_OIDC_NAME`` is not set: the issuer's host."""
    return urlsplit(issuer).hostname or "your identity provider"
