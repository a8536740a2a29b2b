"""A minimal SSE client over a raw socket, for tests that check exact bytes and timing.

HTTP/1.0 keeps the body unchunked, so the bytes read are the bytes the server framed.
"""
import json
import socket
import time
from urllib.parse import urlsplit


class Event:
    def __init__(self, event, data, id, raw, received):
        self.event = event
        self.data = data
        self.id = id
        self.raw = raw
        self.received = received

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return f"Event({self.event!r}, id={self.id!r}, {self.data[:80]!r})"


class SSEClient:
    def __init__(self, url, headers=None, timeout=10, rcvbuf=None):
        parts = urlsplit(url)
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((parts.hostname, parts.port))
        path = parts.path + ("?" + parts.query if parts.query else "")
        lines = [f"GET {path} HTTP/1.0", f"Host: {parts.hostname}:{parts.port}",
                 "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        self.closed = False
        self.status, self.headers = self._read_head()
        self.raw = b""

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
        return chunk

    def _read_head(self):
        while b"\r\n\r\n" not in self.buffer:
            chunk = self._recv()
            if not chunk:
                raise ConnectionError("closed before headers")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def body(self):
        """The whole rest of a non-stream response (errors)."""
        while not self.closed:
            self.buffer += self._recv()
        return self.buffer

    def next_event(self, timeout=10):
        """The next event (comments and retry-only blocks included), or None on close."""
        deadline = time.monotonic() + timeout
        while True:
            for sep in (b"\n\n",):
                if sep in self.buffer:
                    block, self.buffer = self.buffer.split(sep, 1)
                    self.raw += block + sep
                    return self._parse(block + sep)
            if self.closed:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no event in time")
            self.sock.settimeout(remaining)
            self.buffer += self._recv()

    @staticmethod
    def _parse(block):
        event, data, id = "message", [], None
        for line in block.decode("utf-8").split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                id = value
            elif name == "retry":
                event = event if data else "retry"
        return Event(event, "\n".join(data), id, block, time.monotonic())

    def events(self, until=None, timeout=10, skip=("ping", "retry")):
        """Events until ``until(event)`` is true (included) or the stream closes."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(deadline - time.monotonic(), 0.01))
            if ev is None:
                return out
            if ev.event in skip:
                continue
            out.append(ev)
            if until is not None and until(ev):
                return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
