"""Real receivers for the alert tests: an HTTP server recording what webhooks POST (it can
fail or hold requests on demand) and a small SMTP server recording the mail it takes.

Both run in threads of this process (gevent's, once conftest patched threading), so they
answer an in-process app and a gunicorn server alike."""
import email
import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    """``requests``: ``(arrival time, headers, body)``, each JSON body parsed when it is
    JSON. ``fail_next``: answer that many requests 500; ``hold``: keep requests waiting
    (unanswered) until ``release()``."""

    def __init__(self):
        self.requests = []
        self.fail_next = 0
        self.hold = False
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = body.decode("utf-8", "replace")
                receiver.requests.append((time.time(), {k.lower(): v for k, v in self.headers.items()},
                                          parsed, self.path))
                if receiver.hold:
                    receiver._released.wait(60)
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    self.send_response(500)
                    self.send_header("Content-Length", "4")
                    self.end_headers()
                    self.wfile.write(b"nope")
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self):
        self.hold = False
        self._released.set()

    def bodies(self, state=None):
        return [b for _, _, b, _ in self.requests
                if state is None or (isinstance(b, dict) and b.get("state") == state)]

    def close(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()


class SMTPReceiver:
    """A minimal SMTP server (RFC 5321's commands a client sends): ``messages`` holds
    ``(envelope sender, recipients, email.message.Message)``."""

    def __init__(self):
        self.messages = []
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, text):
                self.wfile.write(text.encode() + b"\r\n")

            def handle(self):
                self.reply("220 localhost test SMTP")
                sender, rcpts = None, []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode().strip()
                    verb = cmd[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 localhost")
                    elif verb == "MAIL":
                        sender, rcpts = cmd.split(":", 1)[1].strip().strip("<>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        rcpts.append(cmd.split(":", 1)[1].strip().strip("<>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        data = []
                        while True:
                            part = self.rfile.readline()
                            if part in (b".\r\n", b".\n", b""):
                                break
                            data.append(part[1:] if part.startswith(b"..") else part)
                        receiver.messages.append(
                            (sender, rcpts, email.message_from_bytes(b"".join(data))))
                        self.reply("250 OK queued")
                    elif verb == "QUIT":
                        self.reply("221 Bye")
                        return
                    else:
                        self.reply("250 OK")

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"smtp://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
