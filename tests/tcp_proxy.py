"""A TCP proxy a test can cut and restore: a real network outage between Quaero and its
database, without touching the shared database server."""
import socket

import gevent
from gevent.server import StreamServer


class TCPProxy:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = None
        self.server = None
        self.pairs = set()

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

    def restore(self):
        self.start()
