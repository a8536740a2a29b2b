"""quaero/streaming/pacing.py without a server: windows with a fake clock, filter groups,
batches encoded once, the stream cap."""
import json

import pytest

from quaero.models import LEVELS
from quaero.queries import LineFilter
from quaero.streaming.pacing import LATE, Batch, Group, match_groups, stream_cap
from quaero.streaming.sink import advance

INTERVAL = 0.15


def line(id, job=None, level="info", step=None):
    return {"id": id, "job_id": job, "level": level, "step_name": step, "message": str(id)}


def test_quiet_group_releases_the_leading_edge_at_once_then_holds_a_window():
    g = Group()
    assert g.offer(Batch([line(1)], 10.0), now=10.0, interval=INTERVAL) == 0.0
    first = g.release(10.0)
    assert [ln["id"] for ln in first.lines] == [1] and g.pending == []
    # within the window: held until it closes (a little late), then released together
    delay = g.offer(Batch([line(2)], 10.05), now=10.05, interval=INTERVAL)
    assert delay == pytest.approx(10.0 + INTERVAL * LATE - 10.05)
    g.timer = "set"
    assert g.offer(Batch([line(3), line(4)], 10.1), now=10.1, interval=INTERVAL) is None
    batch = g.release(10.0 + INTERVAL * LATE)
    assert [ln["id"] for ln in batch.lines] == [2, 3, 4]
    assert json.loads(batch.encoded) == batch.lines
    assert (batch.first_id, batch.last_id, batch.published) == (2, 4, 10.05)
    assert g.timer is None and g.held() == 0
    # quiet for a full window again: the next one goes at once
    assert g.offer(Batch([line(5)], 11.0), now=11.0, interval=INTERVAL) == 0.0


def test_release_with_nothing_held_is_none():
    g = Group()
    assert g.release(1.0) is None


def test_a_single_batch_is_not_re_encoded():
    b = Batch([line(1)], 0.0)
    assert Batch.combine([b]) is b


def test_match_groups_once_per_filter():
    svc = LineFilter(min_level=LEVELS["info"])
    warn_a = LineFilter(job_ids=("a",), min_level=LEVELS["warn"])
    build_a = LineFilter(job_ids=("a",), step="build", min_level=LEVELS["debug"])
    ab = LineFilter(job_ids=("a", "b"), min_level=LEVELS["info"])
    by_key = {None: {svc}, "a": {warn_a, build_a, ab}, "b": {ab}}
    lines = [line(1, "a", "debug", "build"), line(2, None, "info"), line(3, "b", "error"),
             line(4, "a", "warn", "test"), line(5, None, "debug")]
    got = {f: [ln["id"] for ln in matched] for f, matched in match_groups(lines, by_key)}
    assert got == {svc: [2], warn_a: [4], build_a: [1], ab: [3, 4]}


@pytest.mark.parametrize("connections, configured, cap", [
    (10000, 10000, 9000), (1000, None, 900), (1000, 0, 0), (30, 10000, 22), (30, 5, 5),
    (8, None, 1)])
def test_stream_cap_leaves_a_reserve(connections, configured, cap):
    assert stream_cap(connections, configured) == cap


def test_advance_keeps_views_of_the_same_bytes():
    a, b = b"abc", b"defgh"
    rest = advance([a, b], 4)
    assert len(rest) == 1 and bytes(rest[0]) == b"efgh" and rest[0].obj is b
    assert advance([a, b], 8) == []
    assert advance([a, b], 0) == [a, b]
