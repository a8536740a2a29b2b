"""The keys API (admin only, ``access.ROUTE_NEEDS``): ``POST /api/keys`` makes a key and
answers its secret once; ``GET /api/keys`` lists them without secrets; ``DELETE
/api/keys/<id>`` revokes one, refused from the next request on, on every worker and host
(``keystore``: each request reads the key's row). Each change is an audit line."""
from flask import Blueprint, current_app, jsonify

from .. import access, keystore
from ..errors import Invalid, NotFound
from ..models import utcnow
from .auth import actor, audit
from .params import json_body

bp = Blueprint("keys", __name__, url_prefix="/api")  # auth: web.auth (admin), for all of /api


def _engine():
    return current_app.extensions["quaero"].engine


@bp.post("/keys")
def create_key():
    data = json_body()
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > access.MAX_KEY_NAME \
            or any(ord(c) < 32 for c in name):
        raise Invalid(f"name must be 1 to {access.MAX_KEY_NAME} characters of text")
    now = utcnow()
    try:
        scopes = access.clean_scopes(data.get("scopes"))
        jobs = access.clean_pattern(data.get("jobs"))
        sources = access.clean_sources(data.get("sources"))
        expires_at = access.parse_expiry(data.get("expires_at"), now)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if (jobs is not None or sources is not None) and access.ADMIN in scopes:
        raise Invalid("an admin key cannot be limited to jobs or sources (it could make "
                      "keys that are not)")
    unknown = set(data) - {"name", "scopes", "jobs", "sources", "expires_at"}
    if unknown:
        raise Invalid(f"unknown field {sorted(unknown)[0]!r}")
    key, secret = keystore.create_key(_engine(), name.strip(), scopes, jobs, expires_at,
                                      actor(), now, sources=sources)
    audit("key-create", f"created key {key['name']!r} ({key['id']}) with scopes "
                        f"{','.join(scopes)}" + (f" for jobs {jobs!r}" if jobs else "")
                        + (f" as sources {', '.join(sources)}" if sources else ""),
          key_id=key["id"], key_name=key["name"], scopes=",".join(scopes), jobs=jobs)
    return jsonify({**key, "key": secret}), 201


@bp.get("/keys")
def list_keys():
    return jsonify(keys=keystore.list_keys(_engine()))


@bp.delete("/keys/<key_id>")
def revoke_key(key_id):
    key = keystore.revoke_key(_engine(), key_id[:16], utcnow()) if len(key_id) <= 16 else None
    if key is None:
        raise NotFound("no such key (or it was revoked already)")
    audit("key-revoke", f"revoked key {key['name']!r} ({key['id']})", key_id=key["id"],
          key_name=key["name"])
    return "", 204
