"""``python -m quaero``: the command line (see :mod:`quaero.cli`)."""
from gevent import monkey

monkey.patch_all()  # in-process runs use gevent like the server does

from quaero.cli import main  # noqa: E402

main()
