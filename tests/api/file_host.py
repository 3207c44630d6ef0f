"""A local HTTP server playing Jotform's file host and the result webhook's receiver, on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.ports import free_port


class FileHost:
    """GET /files/<name> serves what `add` put there; /redirect?to=URL answers 302; /slow never answers in
    time; POST /results records result bodies, failing the first `fail_first[submission_id]` of each."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files: dict[str, tuple[str, bytes]] = {}
        self.downloads: Counter[str] = Counter()
        self.headers: dict[str, dict[str, str]] = {}
        self.fail_first: Counter[str] = Counter()
        self.results: dict[str, list[tuple[int, dict]]] = defaultdict(list)  # submission -> (status answered, body)
        self.released = threading.Event()  # set at shutdown, so that /slow lets go
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[name] = (content_type, data)
        return f"{self.url}/files/{name}"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()

    def _handler(self):
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path == "/slow":
                    host.released.wait(30)
                    return self._answer(200, b"too late", {"Content-Type": "image/png"})
                if parts.path == "/redirect":
                    return self._answer(302, headers={"Location": parse_qs(parts.query)["to"][0]})
                name = parts.path.removeprefix("/files/")
                if name not in host.files:
                    return self._answer(404)
                host.downloads[name] += 1
                host.headers[name] = dict(self.headers)
                content_type, data = host.files[name]
                self._answer(200, data, {"Content-Type": content_type})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                submission = body.get("submission_id", "")
                status = 200
                if host.fail_first[submission] > 0:
                    host.fail_first[submission] -= 1
                    status = 500
                host.results[submission].append((status, body))
                self._answer(status)

        return Handler


def jotform_fields(form_id: str, submission_id: str, uploads: dict[str, list[str]]) -> dict[str, str]:
    """The form fields of a Jotform webhook POST, with the personal answers a real clinic form would have."""
    answers = {
        "slug": f"submit/{form_id}", "jsExecutionTracker": "build-date-1733000000000", "submitSource": "form",
        "buildDate": "1733000000000", "q3_patientName": {"first": "Maria", "last": "Oliveira-Santos"},
        "q4_email": "maria.santos@example.org", "q6_tooth": "36", "q7_notes": "Implant placed 2014, abroad.",
        **uploads, "event_id": "1733000000000_231234567890123_abc1234", "path": f"/submit/{form_id}",
    }
    pretty = ("Patient name:Maria Oliveira-Santos, E-mail:maria.santos@example.org, Tooth:36, "
              + ", ".join(f"X-ray:{' '.join(urls)}" for urls in uploads.values()))
    return {"formID": form_id, "submissionID": submission_id, "webhookURL": "", "ip": "203.0.113.7",
            "formTitle": "Implant identification request", "pretty": pretty, "username": "clinic_demo",
            "rawRequest": json.dumps(answers), "type": "WEB"}


PERSONAL = ("Maria", "Oliveira", "maria.santos", "203.0.113.7", "abroad")
