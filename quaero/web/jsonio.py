"""JSON in and out of the API with orjson: a 100-line ``GET /api/logs`` spent a fifth of
its time in the standard library's encoder (sorted keys, ASCII escapes), and a one-line
``POST /api/logs`` a tenth of it parsing.

orjson is only the fast path: a body it refuses goes to the standard library, which
decides (it accepts ``NaN`` and integers beyond 64 bits; both turn away the same broken
text), and a value it cannot encode goes to Flask's own provider. Keys come out in the
order they were built, non-ASCII text as UTF-8."""
import json

import orjson
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def loads(data):
    """The value of a JSON document (bytes or str); ``ValueError`` or ``RecursionError``
    when it is not one, as ``json.loads`` says."""
    try:
        return orjson.loads(data)
    except (ValueError, RecursionError):
        return json.loads(data)


class OrjsonProvider(DefaultJSONProvider):
    """``app.json``: ``jsonify`` and ``response.json`` through orjson."""

    def dumps(self, obj, **kwargs):
        if not kwargs:
            try:
                return orjson.dumps(obj, option=_OPTIONS).decode()
            except TypeError:  # a type orjson leaves to us: Flask's rules for it
                pass
        return super().dumps(obj, **kwargs)

    def loads(self, s, **kwargs):
        return loads(s) if not kwargs else super().loads(s, **kwargs)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, option=_OPTIONS)
        except TypeError:
            body = super().dumps(obj)
        return self._app.response_class(body, mimetype=self.mimetype)
