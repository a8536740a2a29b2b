"""The stream engine behind ``GET /api/logs/stream`` (the route is ``quaero/web/stream.py``).

- ``sse.py``        SSE framing: pure functions, bytes out.
- ``pacing.py``     pure: lines matched to filter groups, batches encoded once, the 150 ms
                    windows of a group (``now`` passed in).
- ``sink.py``       the only code that knows gunicorn's client socket: writes lists of
                    shared parts with ``sendmsg``; without it (plain WSGI, TLS) the
                    session yields bytes to the server.
- ``subscriber.py`` one client's state: the hub appends, the stream's greenlet takes; a
                    queue past its bound is forgotten and read from the database instead.
- ``hub.py``        every open stream of the process: lines in id order, fan-out per
                    group, statuses, pings and metrics.
- ``watcher.py``    the database reads of the hub and its watcher greenlet (lines and job
                    changes made by other processes, recounts).
- ``session.py``    one stream's body: backfill -> live -> end, and the "retry later" answer.
"""
