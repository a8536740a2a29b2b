"""Names ``quaero/stream.py`` (and bench/tail.py) import from here; the API itself is in
``quaero/web/``. Goes away when the stream route moves into ``quaero/web/``."""
from .web.auth import require_token  # noqa: F401
from .web.params import check_jobs_exist, parse_int, parse_query  # noqa: F401
