"""Who may do what: the pure rules of Access (docs/contract.md), no I/O.

- Four scopes: ``ingest`` (every way lines get in), ``read`` (every GET of logs, jobs,
  search, histogram, facets, the stream, and the pages), ``operate`` (run, cancel, rerun,
  delete), ``admin`` (keys and sessions; implies the others).
- :func:`route_need` says what a route needs, from one table over the URL rules
  (:data:`ROUTE_NEEDS`); a route it does not name needs ``admin`` (fail closed) and
  ``tests/test_access.py`` fails until it is named.
- API keys are ``qk_<id>_<secret>``: the id (16 hex digits) finds the row by its primary
  key, the secret (``secrets.token_urlsafe(32)``, 256 bits) is checked against a SHA-256
  of the whole key with ``hmac.compare_digest``. A fast hash is right here: a slow KDF
  protects low-entropy passwords; guessing a 256-bit secret is hopeless however fast the
  hash, and a slow one would make every wrong key sent to the server cost it CPU.
- A key may be limited to jobs whose name (or definition) matches a pattern (``*`` any
  run of characters, ``?`` one; the rest literal; case-sensitive): see :class:`Principal`.
- Sign-in attempts: :func:`rate_limited` over fixed windows (counts kept by the caller).
"""
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

INGEST, READ, OPERATE, ADMIN = "ingest", "read", "operate", "admin"
SCOPES = (INGEST, READ, OPERATE, ADMIN)
# a person's role (a login session) and the scopes it gives
ROLES = {"read": frozenset({READ}), "operate": frozenset({READ, OPERATE}),
         "admin": frozenset({ADMIN})}
PUBLIC = "public"            # the route has its own rule (health, metrics, login, assets)
SIGNED_IN = "signed in"      # any valid credential, whatever its scopes

KEY_PREFIX = "qk_"
KEY_ID_DIGITS = 16
MAX_PATTERN = 200
MAX_KEY_NAME = 200


# --- what each route needs -----------------------------------------------------------

def _either(*scopes):
    return frozenset(scopes)


# URL rule (parameters written ``<>``) -> method -> need: a scope, a frozenset of scopes
# (any one of them; the route checks the rest once it has read the request), PUBLIC.
ROUTE_NEEDS = {
    "/api/logs": {"GET": READ, "POST": INGEST},
    "/api/logs/facets": {"GET": READ},
    "/api/logs/histogram": {"GET": READ},
    "/api/logs/stream": {"GET": READ},
    "/api/search": {"GET": READ},
    "/api/openapi.json": {"GET": READ},
    "/api/job-definitions": {"GET": READ},
    "/api/jobs": {"GET": READ,
                  # {"name"}: a producer's job (ingest); {"definition"}: a run (operate)
                  "POST": _either(INGEST, OPERATE)},
    "/api/jobs/<>": {"GET": READ, "DELETE": OPERATE,
                     # a producer ends its job (ingest); a runner's job needs operate
                     "PATCH": _either(INGEST, OPERATE)},
    "/api/jobs/<>/steps/<>": {"PATCH": _either(INGEST, OPERATE)},
    "/api/jobs/<>/logs.txt": {"GET": READ},
    "/api/jobs/<>/cancel": {"POST": OPERATE},
    "/api/jobs/<>/rerun": {"POST": OPERATE},
    "/api/keys": {"GET": ADMIN, "POST": ADMIN},
    "/api/keys/<>": {"DELETE": ADMIN},
    "/api/sessions": {"GET": ADMIN, "DELETE": ADMIN},
    "/api/alerts": {"GET": READ},
    "/api/alerts/<>/test": {"POST": OPERATE},
    "/v1/logs": {"POST": INGEST},
    "/loki/api/v1/push": {"POST": INGEST},
    "/": {"GET": READ},
    "/queue": {"GET": READ},
    "/search": {"GET": READ},
    "/jobs/<>": {"GET": READ},
    "/alerts": {"GET": READ},
    "/settings": {"GET": ADMIN},
    "/login": {"GET": PUBLIC, "POST": PUBLIC},
    "/logout": {"POST": PUBLIC},
    "/auth/oidc/login": {"GET": PUBLIC},       # OpenID Connect: to the provider and back
    "/auth/oidc/callback": {"GET": PUBLIC},
    "/healthz": {"GET": PUBLIC},
    "/metrics": {"GET": PUBLIC},
    "/static/<>": {"GET": PUBLIC},
}
_PARAM = re.compile(r"<[^>]*>")


def rule_key(rule):
    """``/api/jobs/<job_id>/cancel`` -> ``/api/jobs/<>/cancel``: a rule's shape, whatever
    its parameters are called."""
    return _PARAM.sub("<>", rule)


def route_need(method, rule):
    """What ``method`` on the URL rule ``rule`` needs, or None when the table does not
    say (the caller then asks for ``admin``). HEAD is GET's; OPTIONS needs a credential."""
    needs = ROUTE_NEEDS.get(rule_key(rule))
    if needs is None:
        return None
    if method == "OPTIONS":
        return PUBLIC if PUBLIC in needs.values() else SIGNED_IN
    return needs.get("GET" if method == "HEAD" else method)


def need_text(need):
    if isinstance(need, frozenset):
        return " or ".join(repr(s) for s in sorted(need))
    return repr(need)


# --- who is asking ---------------------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    """The caller of one request: ``kind`` is ``token`` (QUAERO_API_TOKEN), ``key`` (an
    API key), ``session`` (a signed-in browser) or ``local`` (no secret configured:
    loopback clients may do everything). ``name`` says who, for the audit trail."""
    kind: str
    name: str
    scopes: frozenset
    jobs: str = None            # a key's job pattern: only jobs whose name matches
    sources: frozenset = None   # a key's sources: lines it sends must name one of them
    key_id: str = None
    session_id: str = None      # the hash that names the session's row
    role: str = None

    def has(self, scope):
        return ADMIN in self.scopes or scope in self.scopes

    def meets(self, need):
        """Whether the scopes satisfy ``need`` (a scope, or a frozenset: any one of them)."""
        if need in (PUBLIC, SIGNED_IN):
            return True
        if isinstance(need, frozenset):
            return any(self.has(s) for s in need)
        return self.has(need)

    def may_job(self, name, definition=None):
        """A job this principal may touch: it has no job pattern, or the job's name or
        definition matches it."""
        if self.jobs is None:
            return True
        return any(v is not None and job_pattern_matches(self.jobs, v)
                   for v in (name, definition))

    def may_source(self, source):
        """A source this principal may send lines as: it has no source list, or the
        source is on it (a line without a source is not)."""
        return self.sources is None or source in self.sources

    @property
    def is_admin(self):
        return ADMIN in self.scopes

    def scope_list(self):
        return sorted(self.scopes, key=SCOPES.index)


def local_principal():
    return Principal("local", "local", frozenset({ADMIN}))


def token_principal():
    return Principal("token", "token", frozenset({ADMIN}))


def role_scopes(role):
    return ROLES[role]


def missing_scope_message(principal, need):
    return f"forbidden: this request needs the {need_text(need)} scope; {describe(principal)} " \
           f"has {', '.join(principal.scope_list()) or 'none'}"


def describe(principal):
    if principal.kind == "key":
        return f"key {principal.name!r}"
    if principal.kind == "session":
        return f"{principal.name} (role {principal.role})"
    return principal.name


def job_refusal(principal, job_name):
    return (f"forbidden: {describe(principal)} is limited to jobs matching "
            f"{principal.jobs!r}; job {job_name!r} does not")


# --- job patterns and sources -------------------------------------------------------------

MAX_SOURCES = 20


def clean_sources(value):
    """A key's source list as given (None: no limit), or ValueError saying why not."""
    if value is None:
        return None
    if (not isinstance(value, list) or not 0 < len(value) <= MAX_SOURCES
            or not all(isinstance(s, str) and 0 < len(s) <= 200 and "\x00" not in s
                       for s in value)):
        raise ValueError(f"sources must be a list of 1 to {MAX_SOURCES} source names "
                         "(1 to 200 characters each)")
    return sorted(set(value))


def clean_pattern(value):
    """A job pattern as given (None: no limit), or ValueError saying why not."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_PATTERN or any(
            ord(c) < 32 for c in value):
        raise ValueError(f"jobs must be a name pattern of at most {MAX_PATTERN} characters")
    return value


def _pattern_regex(pattern):
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in pattern) + r"\Z", re.S)


def job_pattern_matches(pattern, name):
    """``*`` matches any run of characters, ``?`` one; everything else itself."""
    return _pattern_regex(pattern).match(name) is not None


def pattern_like(pattern):
    """The pattern as SQL LIKE text (escape character ``\\``): PostgreSQL's LIKE is
    case-sensitive, as the pattern is."""
    out = []
    for c in pattern:
        if c in "\\%_":
            out.append("\\" + c)
        else:
            out.append({"*": "%", "?": "_"}.get(c, c))
    return "".join(out)


def pattern_glob(pattern):
    """The pattern as SQLite GLOB text (case-sensitive; SQLite's LIKE is not)."""
    return "".join("[[]" if c == "[" else c for c in pattern)


# --- keys and sessions: secrets, and what is kept of them ---------------------------------

def new_key(key_id=None):
    """``(id, key)``: a new key's id and its whole text (shown once, never stored)."""
    key_id = key_id or secrets.token_hex(KEY_ID_DIGITS // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


_KEY = re.compile(r"qk_([0-9a-f]{%d})_[A-Za-z0-9_-]{20,100}\Z" % KEY_ID_DIGITS)


def key_id_of(text):
    """The id in a key's text, or None when it does not look like one of our keys."""
    m = _KEY.match(text)
    return m.group(1) if m else None


def secret_hash(text):
    """What is stored of a key or a session secret: SHA-256, hex (see the module doc)."""
    return hashlib.sha256(text.encode()).hexdigest()


def same_hash(text, stored):
    return hmac.compare_digest(secret_hash(text).encode(), stored.encode())


def clean_scopes(value):
    if (not isinstance(value, list) or not value
            or any(s not in SCOPES for s in value)):
        raise ValueError(f"scopes must be a non-empty list of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in value]


def usable(expires_at, revoked_at, now):
    """A key or session that is neither revoked nor past its expiry."""
    return revoked_at is None and (expires_at is None or expires_at > now)


LAST_USED_EVERY = timedelta(minutes=1)


def last_used_due(last_used_at, now):
    """Whether a key's ``last_used_at`` is worth writing again (at most once a minute)."""
    return last_used_at is None or now - last_used_at >= LAST_USED_EVERY


# --- sign-in attempts ------------------------------------------------------------------

LOGIN_WINDOW = timedelta(minutes=5)
LOGIN_FAILURES_PER_ADDRESS = 10
# one account (the token) guessed from many addresses: higher, so one address cannot lock
# everyone out of the pages (API clients with the token or a key never are)
LOGIN_FAILURES_PER_ACCOUNT = 50


def rate_limited(counts, now):
    """``counts``: ``[(window_start, failures, limit)]`` of the client's address and the
    account. Seconds to wait (>= 1) when one of them is at its limit, else None."""
    waits = [(start + LOGIN_WINDOW - now).total_seconds() for start, failures, limit in counts
             if start is not None and failures >= limit and start + LOGIN_WINDOW > now]
    return max(1, int(max(waits) + 0.999)) if waits else None


def window_cutoff(now):
    return now - LOGIN_WINDOW


def parse_expiry(value, now):
    """An ``expires_at`` as given (ISO 8601; without a zone: UTC) as a naive UTC datetime
    in the future, None for none, or ValueError."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("expires_at must be an ISO 8601 time")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("expires_at must be an ISO 8601 time") from None
    if at.tzinfo is not None:
        at = (at - at.utcoffset()).replace(tzinfo=None)
    if at <= now:
        raise ValueError("expires_at must be in the future")
    return at
