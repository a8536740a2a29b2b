"""``python -m quaero``: the command line (see :mod:`quaero.cli`)."""
import sys

# In-process runs use gevent like the server does. The producers (exec, pipe) run plain
# threads: a blocking read of stdin must not stall their sender on a shared hub.
_words = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
if not {"exec", "pipe"} & set(_words):
    from gevent import monkey
    monkey.patch_all()

from quaero.cli import main  # noqa: E402

main()
