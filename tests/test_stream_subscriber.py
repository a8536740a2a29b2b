"""quaero/streaming/subscriber.py without a server: a queue past its bound falls behind
(issue 20) and reads its backlog from the database; nothing is lost or sent twice, and no
status overtakes the lines it waits for."""
import json
from collections import defaultdict

from quaero.queries import LineFilter
from quaero.streaming.pacing import Batch
from quaero.streaming.sse import encode_json

LINE_BYTES = 100


class FakeHub:
    def __init__(self):
        self.counts = defaultdict(int)
        self.delivered = 0
        self.unsubscribed = []

    def unsubscribe(self, conn):
        self.unsubscribed.append(conn)


def line(id):
    return {"id": id, "job_id": "j", "level": "info", "step_name": None,
            "message": "m".ljust(LINE_BYTES - 80, "m")}


def batch(first, last):
    return Batch([line(i) for i in range(first, last + 1)], 0.0)


def subscriber(buffer_bytes, last_id=0):
    from quaero.streaming.subscriber import Subscriber
    conn = Subscriber(LineFilter(job_ids=("j",)), FakeHub(), buffer_bytes)
    conn.backfill_from(0, last_id, False)
    return conn


def ids(parts):
    data = b"".join(parts).split(b"\ndata: ", 1)[1]
    return [ln["id"] for ln in json.loads(data)["logs"]]


def event_id(parts):
    return int(b"".join(parts).split(b"\nid: ", 1)[1].split(b"\n", 1)[0])


def test_one_batch_past_the_bound_is_kept_it_is_shared():
    conn = subscriber(buffer_bytes=1000)
    conn.push(batch(1, 50))
    assert not conn.behind and len(conn.batches) == 1
    parts, count = conn.next_logs_parts()
    assert ids(parts) == list(range(1, 51)) and count == 50


def test_a_queue_past_its_bound_falls_behind_and_catches_up_from_the_database():
    conn = subscriber(buffer_bytes=2000, last_id=10)
    conn.push(batch(11, 20))
    assert not conn.behind
    conn.push(batch(21, 40))  # past the bound, with two batches: forget them
    assert conn.behind and not conn.batches and conn.pending_bytes == 0
    assert conn.skipped_upto == 40 and conn.hub.counts["fell_behind"] == 1
    assert conn.first_held() == 11  # statuses wait for the backlog
    conn.push(batch(41, 45))  # queued meanwhile, not taken until the backlog is read
    after, limit = conn.backlog_read(most=1000)
    per_line = len(encode_json([line(11)]))
    assert after == 10 and limit == max(10, 2000 // per_line)
    # the database page holds more than what was forgotten: the queue's head overlaps
    parts, count = conn.backlog_parts([line(i) for i in range(11, 43)], more=True)
    assert ids(parts) == list(range(11, 43)) and count == 32 and event_id(parts) == 42
    assert not conn.behind, "every forgotten line was read"
    parts, count = conn.next_logs_parts()
    assert ids(parts) == [43, 44, 45] and count == 3, "each once, in id order"
    assert conn.displayed == 35 and conn.total == 35


def test_behind_stays_behind_until_the_page_reaches_every_forgotten_line():
    conn = subscriber(buffer_bytes=2000)
    conn.push(batch(1, 20))
    conn.push(batch(21, 40))
    assert conn.behind and conn.skipped_upto == 40
    conn.backlog_read(most=1000)
    conn.backlog_parts([line(i) for i in range(1, 16)], more=True)
    assert conn.behind and conn.first_held() == 16
    # another overflow while the next read waits for the database
    conn.backlog_read(most=1000)
    conn.push(batch(41, 60))
    conn.push(batch(61, 80))
    assert conn.skipped_upto == 80 and conn.hub.counts["fell_behind"] == 1
    # the read began before 41..80 were forgotten: its end is not theirs
    conn.backlog_parts([line(i) for i in range(16, 41)], more=False)
    assert conn.behind and conn.last_id == 40
    conn.backlog_read(most=1000)
    conn.backlog_parts([line(i) for i in range(41, 81)], more=False)
    assert not conn.behind and conn.next_logs_parts() == (None, 0)


def test_an_empty_page_ends_the_backlog_when_the_read_began_after_the_forgetting():
    """The forgotten lines were pruned or deleted meanwhile: the database has nothing."""
    conn = subscriber(buffer_bytes=2000, last_id=5)
    conn.push(batch(6, 25))
    conn.push(batch(26, 45))
    conn.backlog_read(most=1000)
    assert conn.backlog_parts([], more=False) == (None, 0)
    assert not conn.behind and conn.last_id == 5


def test_a_page_holds_about_the_buffer_of_lines_as_big_as_the_last_ones():
    conn = subscriber(buffer_bytes=64 << 10)
    conn.push(batch(1, 400))
    conn.push(batch(401, 800))
    _, limit = conn.backlog_read(most=1000)
    per_line = len(encode_json([line(1)]))
    assert limit == (64 << 10) // per_line
    big = [dict(line(i), message="x" * 16000) for i in range(1, 4)]
    conn.backlog_parts(big, more=True)
    _, limit = conn.backlog_read(most=1000)
    assert limit == 10, "at least a few lines, however big"


def test_statuses_wait_for_the_backlog():
    conn = subscriber(buffer_bytes=2000)
    conn.push(batch(1, 20))
    conn.push(batch(21, 40))
    conn.hub.delivered = 40
    conn.push_status(b"event: status\n\n", "j", "completed")
    assert conn.take_statuses(conn.first_held()) == [], "lines 1..40 come first"
    conn.backlog_read(most=1000)
    conn.backlog_parts([line(i) for i in range(1, 41)], more=False)
    assert conn.take_statuses(conn.first_held()) == [b"event: status\n\n"]


def test_recount_leaves_a_stream_behind_alone():
    conn = subscriber(buffer_bytes=2000)
    conn.push(batch(1, 20))
    conn.recount(total=100, held=0, newest=20)
    assert conn.total == 80
    conn.push(batch(21, 40))
    conn.recount(total=100, held=0, newest=40)
    assert conn.total == 80, "its backlog is in the database, not in its queue"


def test_only_a_write_of_the_server_itself_is_timed_by_the_ticker():
    conn = subscriber(buffer_bytes=2000)
    conn.begin_write(now=100.0)
    assert not conn.stalled(now=105.0, stall=10) and conn.stalled(now=110.5, stall=10)
    conn.end_write()
    assert not conn.stalled(now=200.0, stall=10)
    conn.headers_sent(sink=object())  # the sink times its own writes
    conn.begin_write(now=100.0)
    assert not conn.stalled(now=200.0, stall=10)


def test_drop_closes_once():
    conn = subscriber(buffer_bytes=2000)
    conn.drop()
    conn.drop()
    assert conn.dropped and conn.hub.counts["slow_dropped"] == 1
    conn.push(batch(1, 2))
    assert not conn.batches


class GunicornSocket:
    """What ``open_sink`` finds in the environ: ``._sock`` is the real socket."""

    def __init__(self, sock):
        self._sock = sock


def test_a_send_the_socket_takes_nothing_of_stalls():
    import socket
    import time

    import pytest

    from quaero.streaming.sink import SocketSink, Stalled
    server, client = socket.socketpair()
    try:
        sink = SocketSink(GunicornSocket(server), chunked=False)
        start = time.monotonic()
        with pytest.raises(Stalled):
            sink.send([b"x" * (4 << 20)], stall=0.3)  # nobody reads
        assert 0.3 <= time.monotonic() - start < 2
    finally:
        server.close()
        client.close()


def test_a_send_to_a_slow_reader_that_takes_something_in_time_does_not_stall():
    import socket

    import gevent

    from quaero.streaming.sink import SocketSink
    server, client = socket.socketpair()
    received = []

    def read_slowly():  # 64 KiB every 0.1 s: slower than the send, never 0.3 s without
        while sum(received) < (1 << 20):
            received.append(len(client.recv(65536)))
            gevent.sleep(0.1)
    try:
        sink = SocketSink(GunicornSocket(server), chunked=False)
        reader = gevent.spawn(read_slowly)
        sink.send([b"y" * (1 << 20)], stall=0.3)  # returns: every byte went
        reader.get(timeout=30)
        assert sum(received) == 1 << 20
    finally:
        server.close()
        client.close()
