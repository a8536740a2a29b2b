"""Helpers for ``demo.toml``: a burst (run as a script) and a trickle (a python step)."""
import logging
import random
import sys
import time

log = logging.getLogger("demo")


def burst(n):
    """``n`` lines as fast as Python prints them, some of them at other levels."""
    out = sys.stdout
    for i in range(1, n + 1):
        if i % 1000 == 0:
            out.write(f"ERROR: burst line {i} of {n}: every 1000th line is an error\n")
        elif i % 250 == 0:
            out.write(f"WARNING: burst line {i} of {n}\n")
        elif i % 10 == 0:
            out.write(f"[debug] burst line {i} of {n}\n")
        else:
            out.write(f"burst line {i} of {n}: {'#' * (i % 40)}\n")
    out.flush()


def trickle(ctx):
    """A slow step logging through Python's logging, about 25 seconds."""
    log.info("trickle: a python step in job %s; its logging lands in this step", ctx.job_id)
    total = 50
    for i in range(1, total + 1):
        time.sleep(0.5)  # gevent-patched: other jobs and streams go on meanwhile
        pct = 100 * i // total
        if i % 10 == 0:
            log.warning("progress %d%%: a warning every 10th tick", pct)
        elif i == 25:
            log.error("a simulated error at tick %d (the step goes on)", i)
        elif i % 3 == 0:
            log.debug("tick %d: debug detail, value=%.3f", i, random.random())
        else:
            log.info("progress %d%% (%d/%d)", pct, i, total)
    log.info("trickle done")


if __name__ == "__main__":
    if sys.argv[1:2] == ["burst"]:
        burst(int(sys.argv[2]) if len(sys.argv) > 2 else 5000)
