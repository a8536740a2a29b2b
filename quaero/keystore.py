"""API keys, login sessions and sign-in failure counts in the database (the rules are in
``access.py``; the HTTP side in ``web/auth.py`` and ``web/api_keys.py``).

Every check reads the database: a key or a session is one primary-key lookup per request,
so a key revoked (or a session ended) on one worker is refused on every other worker and
host by their next request; nothing is cached. A key's ``last_used_at`` is written at most
once a minute (``access.last_used_due``), not once per request. Each function takes the
engine and holds no transaction beyond its own few statements."""
import json
import secrets
from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import access
from .models import iso, keys_t, login_failures_t, sessions_t

# --- keys ------------------------------------------------------------------------------


def key_dict(row):
    return {"id": row.id, "name": row.name, "scopes": row.scopes.split(","),
            "jobs": row.jobs, "sources": json.loads(row.sources) if row.sources else None,
            "created_by": row.created_by, "created_at": iso(row.created_at),
            "expires_at": iso(row.expires_at), "last_used_at": iso(row.last_used_at)}


def create_key(engine, name, scopes, jobs, expires_at, created_by, now, sources=None):
    """A new key: ``(its dict, its text)``; the text is shown once and never kept."""
    key_id, text = access.new_key()
    values = {"id": key_id, "name": name, "secret_hash": access.secret_hash(text),
              "scopes": ",".join(scopes), "jobs": jobs,
              "sources": json.dumps(sources) if sources is not None else None,
              "created_by": created_by[:200],
              "created_at": now, "expires_at": expires_at, "last_used_at": None,
              "revoked_at": None}
    with engine.begin() as conn:
        conn.execute(keys_t.insert().values(**values))
    return key_dict(SimpleNamespace(**values)), text


def list_keys(engine):
    """The keys not revoked, newest first (expired ones too: their expiry shows why)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(keys_t).where(keys_t.c.revoked_at.is_(None))
                            .order_by(keys_t.c.created_at.desc(), keys_t.c.id)).all()
    return [key_dict(r) for r in rows]


def revoke_key(engine, key_id, now):
    """Revoke a key: its dict, or None when there is no such key not revoked already."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(keys_t).where(
            keys_t.c.id == key_id, keys_t.c.revoked_at.is_(None))).first()
        if row is None:
            return None
        conn.execute(keys_t.update().where(keys_t.c.id == key_id).values(revoked_at=now))
    return key_dict(row)


_FIND_KEY = sa.select(keys_t.c.name, keys_t.c.secret_hash, keys_t.c.scopes, keys_t.c.jobs,
                      keys_t.c.sources, keys_t.c.expires_at, keys_t.c.revoked_at, keys_t.c.last_used_at
                      ).where(keys_t.c.id == sa.bindparam("id"))


class KeyRefused(Exception):
    """A key that exists but may not be used now (revoked, expired): the reason."""


def key_principal(engine, text, now):
    """The principal of a key's text, None for no such key (or a wrong secret), or
    :class:`KeyRefused`. One primary-key read; a write at most once a minute."""
    key_id = access.key_id_of(text)
    if key_id is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(_FIND_KEY, {"id": key_id}).first()
    if row is None or not access.same_hash(text, row.secret_hash):
        return None
    if row.revoked_at is not None:
        raise KeyRefused("this key was revoked")
    if not access.usable(row.expires_at, None, now):
        raise KeyRefused("this key has expired")
    if access.last_used_due(row.last_used_at, now):
        _mark_used(engine, key_id, now)
    sources = frozenset(json.loads(row.sources)) if row.sources else None
    return access.Principal("key", row.name, frozenset(row.scopes.split(",")), jobs=row.jobs,
                            sources=sources, key_id=key_id)


def _mark_used(engine, key_id, now):
    """``last_used_at`` = now, unless another worker wrote it in the last minute. Best
    effort: a busy database does not fail the request for it."""
    try:
        with engine.begin() as conn:
            conn.execute(keys_t.update().where(
                keys_t.c.id == key_id,
                sa.or_(keys_t.c.last_used_at.is_(None),
                       keys_t.c.last_used_at <= now - access.LAST_USED_EVERY))
                .values(last_used_at=now))
    except sa.exc.OperationalError:
        pass


# --- sessions --------------------------------------------------------------------------

def start_session(engine, subject, role, lifetime, now):
    """A new session for ``subject`` (``"token"``, or a person) with ``role``: the secret
    for the cookie (only its hash is kept). Sessions past their expiry go at the same time."""
    if role not in access.ROLES:
        raise ValueError(f"unknown role {role!r}")
    secret = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(sessions_t.delete().where(sessions_t.c.expires_at < now))
        conn.execute(sessions_t.insert().values(
            id=access.secret_hash(secret), subject=subject[:200], role=role, created_at=now,
            expires_at=now + lifetime, revoked_at=None))
    return secret


_FIND_SESSION = sa.select(sessions_t.c.subject, sessions_t.c.role, sessions_t.c.expires_at,
                          sessions_t.c.revoked_at).where(sessions_t.c.id == sa.bindparam("id"))


def session_principal(engine, secret, now):
    """The principal of a session cookie's secret, or None (unknown, ended or expired)."""
    if not isinstance(secret, str) or not 20 <= len(secret) <= 100:
        return None
    sid = access.secret_hash(secret)
    with engine.connect() as conn:
        row = conn.execute(_FIND_SESSION, {"id": sid}).first()
    if row is None or not access.usable(row.expires_at, row.revoked_at, now) \
            or row.role not in access.ROLES:
        return None
    return access.Principal("session", row.subject, access.role_scopes(row.role),
                            session_id=sid, role=row.role)


def end_session(engine, session_id, now):
    with engine.begin() as conn:
        conn.execute(sessions_t.update().where(sessions_t.c.id == session_id,
                                               sessions_t.c.revoked_at.is_(None))
                     .values(revoked_at=now))


def list_sessions(engine, now):
    """The sessions still open, newest first: who, the role, when it began and ends (not
    their ids: the hash of a cookie's secret is nobody's business)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sessions_t.c.subject, sessions_t.c.role,
                                      sessions_t.c.created_at, sessions_t.c.expires_at)
                            .where(sessions_t.c.revoked_at.is_(None),
                                   sessions_t.c.expires_at > now)
                            .order_by(sessions_t.c.created_at.desc())).all()
    return [{"subject": r.subject, "role": r.role, "created_at": iso(r.created_at),
             "expires_at": iso(r.expires_at)} for r in rows]


def end_sessions_of(engine, subject, now):
    """End every session of ``subject`` (a person revoked): how many there were."""
    with engine.begin() as conn:
        return conn.execute(sessions_t.update().where(
            sessions_t.c.subject == subject, sessions_t.c.revoked_at.is_(None))
            .values(revoked_at=now)).rowcount


# --- sign-in failures ------------------------------------------------------------------

def login_wait(engine, limits, now):
    """``limits``: ``{counter key: failures allowed}``. Seconds to wait, or None."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(login_failures_t).where(
            login_failures_t.c.key.in_(list(limits)))).all()
    return access.rate_limited([(r.window_start, r.count, limits[r.key]) for r in rows], now)


def _insert(conn):
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(login_failures_t)


def login_failed(engine, keys, now):
    """Count a failed sign-in against each counter of ``keys`` (a counter whose window has
    passed starts again at 1); counters of windows gone are removed."""
    cutoff = access.window_cutoff(now)
    t = login_failures_t
    stale = t.c.window_start <= cutoff
    with engine.begin() as conn:
        conn.execute(t.delete().where(stale, t.c.key.not_in(list(keys))))
        for key in keys:
            stmt = _insert(conn).values(key=key[:200], window_start=now, count=1)
            conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.key], set_={
                "count": sa.case((stale, 1), else_=t.c.count + 1),
                "window_start": sa.case((stale, now), else_=t.c.window_start)}))


def login_succeeded(engine, key):
    with engine.begin() as conn:
        conn.execute(login_failures_t.delete().where(login_failures_t.c.key == key))
