"""``python -m quaero`` and the ``quaero`` command (see :mod:`quaero.cli`).

Only ``run --local`` (the server in this process) uses gevent, patched here before the
command line is imported; every other command is plain Python talking HTTP (``exec`` and
``pipe`` read their input with blocking threads that must not share a hub)."""
import sys


def _runs_the_server_here(args):
    words = args[:args.index("--")] if "--" in args else args
    return "run" in words and "--local" in words


def main():
    if _runs_the_server_here(sys.argv[1:]):
        try:
            from gevent import monkey
        except ImportError:
            pass  # the client side only: `run --local` says what to install
        else:
            monkey.patch_all()
    from quaero.cli import main as cli_main
    cli_main()


if __name__ == "__main__":
    main()
