"""Writing to the client: the only code that knows gunicorn's socket (``._sock``).

Once gunicorn has sent a stream's headers (with its first chunk), a :class:`SocketSink`
writes the rest itself, framing HTTP/1.1 chunks as gunicorn does. A list of parts goes
out with one ``sendmsg``: no copy in Python, and what the socket does not take stays
views of the same (shared) bytes. :func:`open_sink` returns None where there is no such
socket (plain WSGI servers, TLS): the session then yields bytes to the server instead.
"""
import socket
import ssl

MAX_PARTS = 512  # parts per sendmsg (IOV_MAX is 1024)
# A stream socket's kernel send buffer (the kernel doubles it): what a client that does not
# read can hold in the kernel, instead of megabytes each by autotuning on loopback
SEND_BUFFER = 128 << 10


class Stalled(OSError):
    """The client's socket took nothing for the stall bound: it does not read."""


def open_sink(environ):
    """A :class:`SocketSink` for this request's socket, or None (plain WSGI fallback)."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not hasattr(sock, "_sock") or isinstance(sock, ssl.SSLSocket):
        return None
    return SocketSink(sock, environ.get("SERVER_PROTOCOL") == "HTTP/1.1")


def advance(parts, sent):
    """The parts left after ``sent`` bytes of them went out (views, not copies)."""
    i = 0
    while i < len(parts) and sent >= len(parts[i]):
        sent -= len(parts[i])
        i += 1
    rest = parts[i:]
    if sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest


class SocketSink:
    def __init__(self, sock, chunked):
        self.raw = sock._sock
        self.chunked = chunked
        try:
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass

    def frame(self, parts):
        if not self.chunked:
            return parts
        return [b"%X\r\n" % sum(map(len, parts)), *parts, b"\r\n"]

    def try_send_bytes(self, data):
        """``try_send`` for one small byte string: one ``send``, no list to walk."""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        return [] if sent == len(data) else [memoryview(data)[sent:]]

    def try_send(self, parts):
        """Never blocks: returns the parts the socket did not take (empty: all went)."""
        try:
            sent = self.raw.sendmsg(parts[:MAX_PARTS] if len(parts) > MAX_PARTS else parts,
                                    (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return parts
        return advance(parts, sent)

    def send(self, parts, stall=None):
        """Blocks this greenlet until all went; OSError when the client is gone,
        :class:`Stalled` when its socket took nothing for ``stall`` seconds. Time this
        greenlet waited for its turn is not counted against the client: after the wait the
        socket is tried once more, and any progress starts the bound again."""
        from gevent.socket import wait_write
        while parts:
            parts = self.try_send(parts)
            if not parts:
                return
            try:
                wait_write(self.raw.fileno(), timeout=stall, timeout_exc=Stalled)
            except Stalled:
                rest = self.try_send(parts)
                if rest is parts:  # nothing taken
                    raise
                parts = rest
