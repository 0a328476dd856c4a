"""A stand-in for the Hugging Face hub on 127.0.0.1 (``HF_ENDPOINT``) that serves one model repository and
misbehaves on request: answers 500, or cuts a file's download half way. Only the endpoints
``huggingface_hub.snapshot_download`` calls: the revision's info, the file tree, and each file (HEAD + GET)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``files``: name → bytes of the repository ``repo``. ``fail_500``: the next N requests (any path) answer
    500; ``cut``: the next N downloads of a file's bytes stop half way, the connection closed."""

    def __init__(self, repo: str, files: dict[str, bytes]):
        self.repo, self.files = repo, files
        self.fail_500 = 0
        self.cut = 0
        self.log: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _take(self, attr: str) -> bool:
        with self._lock:
            if getattr(self, attr) > 0:
                setattr(self, attr, getattr(self, attr) - 1)
                return True
            return False

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                hub.log.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool):
                path = unquote(urlparse(self.path).path)
                if hub._take("fail_500"):
                    return self._send(500, b'{"error": "injected server error"}', head=head)
                api = f"/api/models/{hub.repo}/"
                if path.startswith(api + "revision/"):
                    info = {"id": hub.repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in hub.files]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                if path.startswith(api + "tree/"):
                    tree = [
                        {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for f, b in hub.files.items()
                    ]
                    return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                prefix = f"/{hub.repo}/resolve/"
                if path.startswith(prefix):
                    name = path[len(prefix) :].split("/", 1)[1]
                    if name not in hub.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    body = hub.files[name]
                    headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
                    start = 0
                    rng = self.headers.get("Range")
                    if rng and rng.startswith("bytes=") and not head:
                        start = int(rng[6:].split("-")[0])
                    if not head and hub._take("cut"):  # promise all of it, send half, hang up
                        hub.log.append((self.command, self.path, -1))
                        self.send_response(206 if start else 200)
                        for k, v in headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(body) - start))
                        self.end_headers()
                        self.wfile.write(body[start : start + max(1, (len(body) - start) // 2)])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if start:
                        headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                        return self._send(206, body[start:], headers, head)
                    return self._send(200, body, headers, head)
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        return Handler
