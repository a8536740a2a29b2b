"""A TCP proxy a test can cut and restore: a real network outage between Quaero and its
database, without touching the shared database server."""
import socket

import gevent
import gevent.event
from gevent.server import StreamServer


class TCPProxy:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = None
        self.server = None
        self.pairs = set()
        self.flowing = gevent.event.Event()  # cleared: a frozen peer (accepts, never answers)
        self.flowing.set()

    def start(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port or 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.server = StreamServer(listener, self._handle)
        self.server.start()
        return self

    def _handle(self, client, _addr):
        self.flowing.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        pair = (client, upstream)
        self.pairs.add(pair)

        def pipe(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    self.flowing.wait()
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in pair:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        gevent.joinall([gevent.spawn(pipe, client, upstream), gevent.spawn(pipe, upstream, client)])
        self.pairs.discard(pair)
        client.close()
        upstream.close()

    def cut(self):
        """Refuse new connections and break the open ones."""
        self.server.stop(timeout=0)
        for pair in list(self.pairs):
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self):
        """Stop passing bytes either way, connections left open: a database stopped with
        SIGSTOP (or behind a dead route), as its clients see it."""
        self.flowing.clear()

    def thaw(self):
        self.flowing.set()

    def restore(self):
        self.start()
