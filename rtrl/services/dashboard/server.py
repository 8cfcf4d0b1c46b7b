"""The dashboard service: `Dashboard` runs the feeds (frames, status polls); `create_server` serves the
page, `/api/state` (JSON: the newest state, chart history and settings), `/api/events` (Server-Sent
Events: a `state` event per poll, `refresh_hz` a second, and a `frame` event per new game frame) and
`/recordings/latest` (the newest recorded episode, recordings.py).

Stdlib HTTP (ThreadingHTTPServer, one thread per browser connection) and a page of plain HTML, one
script and one stylesheet: nothing to build, nothing fetched from elsewhere, so it works on machines
that reach only package registries. A slow browser skips frames and polls; it never holds up a feed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rtrl.services.dashboard.feeds import FrameFeed, Poller
from rtrl.services.dashboard.recordings import LATEST_URL, RecordingShelf
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.shutdown import stop_on_signals
from rtrl.supervision import read_supervision, supervision_text

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# An event stream with nothing new sends a comment this often, so proxies and browsers keep it open
# and a closed browser is noticed (the write fails).
KEEPALIVE_S = 10.0


class Hub:
    """Wakes every event stream when something new arrived (a poll or a frame)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.version = 0
        self.closed = False

    def notify(self) -> None:
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    def wait(self, seen_version: int, timeout_s: float) -> int:
        with self._changed:
            if self.version == seen_version and not self.closed:
                self._changed.wait(timeout_s)
            return self.version

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()


class Dashboard:
    """The feeds of one dashboard: a status poller and one frame stream per gateway."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.hub = Hub()
        # The gateways, replicas and learner may require TLS and the shared token (rtrl/security.py).
        security = settings.security
        self.poller = Poller(settings, security, self.hub.notify)
        self.feeds = [
            FrameFeed(address, settings.frame_every, self.hub.notify, security) for address in settings.gateways
        ]
        self._frame_json: dict[int, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self.recordings = RecordingShelf(settings.recordings_dir or None)

    def start(self) -> None:
        self.poller.start()
        for feed in self.feeds:
            feed.start()

    def stop(self) -> None:
        self.hub.close()
        for feed in self.feeds:
            feed.stop()
        self.poller.stop()

    def state_json(self) -> dict[str, Any]:
        """The newest state, with each frame stream's health beside the polled numbers."""
        state = dict(self.poller.state())
        state["frame_feeds"] = [
            {"address": feed.address, "error": feed.error, "connects": feed.connects} for feed in self.feeds
        ]
        state["recordings"] = self.recordings.state_json()
        if self.settings.supervision_file:
            state["supervision"] = supervision_text(read_supervision(Path(self.settings.supervision_file)))
        return state

    def full_json(self) -> dict[str, Any]:
        """What a page needs when it opens: the state, the chart history and the settings it runs with."""
        return {
            "settings": {
                "refresh_hz": self.settings.refresh_hz,
                "history_s": self.settings.history_s,
                "frame_every": self.settings.frame_every,
                "gateways": list(self.settings.gateways),
                "learner_address": self.settings.learner_address,
                "recordings": self.recordings.enabled,
            },
            "state": self.state_json(),
            "history": self.poller.history.points(),
        }

    def frame_event(self, gateway: int) -> tuple[int, str] | None:
        """(seq, JSON) of the newest frame of `gateway`, encoded once however many browsers watch."""
        frame = self.feeds[gateway].latest
        if frame is None:
            return None
        with self._lock:
            cached = self._frame_json.get(gateway)
            if cached is None or cached[0] != frame.seq:
                cached = (frame.seq, json.dumps(frame.to_json(gateway, self.poller.action_meanings(gateway))))
                self._frame_json[gateway] = cached
        return cached


class DashboardHandler(BaseHTTPRequestHandler):
    """GET only: the page, its two static files, /api/state, /api/events, /api/frame/N.png, /recordings/latest,
    /healthz."""

    server: DashboardHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        dashboard = self.server.dashboard
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), content_type)
        elif path == "/api/state":
            self._send_json(dashboard.full_json())
        elif path == "/api/events":
            self._events(dashboard)
        elif path.startswith("/api/frame/") and path.endswith(".png"):
            self._frame_png(dashboard, path.removeprefix("/api/frame/").removesuffix(".png"))
        elif path == LATEST_URL:
            self._recording(dashboard)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, f"ok, {dashboard.poller.polls} polls\n".encode(), "text/plain; charset=utf-8")
        else:
            self._send(
                HTTPStatus.NOT_FOUND,
                f"{path} is not a page of the rtrl dashboard; open / (API: /api/state, /api/events, "
                f"{LATEST_URL}).\n".encode(),
                "text/plain; charset=utf-8",
            )

    def _frame_png(self, dashboard: Dashboard, index_text: str) -> None:
        count = len(dashboard.feeds)
        if not index_text.isdigit() or int(index_text) >= count:
            message = (
                f"/api/frame/{index_text}.png: no such gateway; ask for 0 to {count - 1} "
                "(the order of RTRL_DASHBOARD_GATEWAYS).\n"
            )
            self._send(HTTPStatus.NOT_FOUND, message.encode(), "text/plain; charset=utf-8")
            return
        frame = dashboard.feeds[int(index_text)].latest
        if frame is None:
            message = f"no frame from gateway {dashboard.feeds[int(index_text)].address} yet; retry in a second.\n"
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, message.encode(), "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, frame.png, "image/png")

    def _recording(self, dashboard: Dashboard) -> None:
        shelf = dashboard.recordings
        opened = shelf.open_latest()
        if opened is None:
            message = (
                "no recording yet: the dashboard shows recordings when RTRL_DASHBOARD_RECORDINGS_DIR is set "
                "(rtrl up --record-every SECONDS sets it) and a recording is there.\n"
                if not shelf.enabled
                else f"no recording in {shelf.directory} yet; rtrl up --record-every writes one when the learner "
                "has published a checkpoint.\n"
            )
            self._send(HTTPStatus.NOT_FOUND, message.encode(), "text/plain; charset=utf-8")
            return
        recording, file = opened
        with file:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", recording.content_type)
            self.send_header("Content-Length", str(os.fstat(file.fileno()).st_size))
            # Browsers play GIFs but not the MPEG-4 Part 2 (mp4v) video OpenCV writes: an mp4 is downloaded, to be
            # opened in a video player, instead of opening a player that cannot decode it.
            disposition = "inline" if recording.content_type == "image/gif" else "attachment"
            self.send_header("Content-Disposition", f'{disposition}; filename="{recording.path.name}"')
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                shutil.copyfileobj(file, self.wfile)
            except (BrokenPipeError, ConnectionResetError):
                return  # the browser went away

    def _send_json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(value).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _events(self, dashboard: Dashboard) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.close_connection = True
        hub = dashboard.hub
        seen_version = -1
        sent_state_t = None
        sent_frames = [0] * len(dashboard.feeds)
        try:
            while not hub.closed:
                seen_version = hub.wait(seen_version, KEEPALIVE_S)
                chunks = []
                state = dashboard.poller.state()
                if state["t"] != sent_state_t:
                    sent_state_t = state["t"]
                    chunks.append(f"event: state\ndata: {json.dumps(dashboard.state_json())}\n\n")
                for gateway in range(len(dashboard.feeds)):
                    event = dashboard.frame_event(gateway)
                    if event is not None and event[0] != sent_frames[gateway]:
                        sent_frames[gateway] = event[0]
                        chunks.append(f"event: frame\ndata: {event[1]}\n\n")
                self.wfile.write(("".join(chunks) or ": keepalive\n\n").encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return  # the browser went away


class DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard) -> None:
        super().__init__(address, DashboardHandler)
        self.dashboard = dashboard


def create_server(settings: DashboardSettings, dashboard: Dashboard) -> tuple[DashboardHTTPServer, int]:
    """An HTTP server (not yet serving) for `dashboard` on settings.host:port; port 0 picks a free one."""
    server = DashboardHTTPServer((settings.host, settings.port), dashboard)
    return server, server.server_address[1]


def serve(settings: DashboardSettings) -> None:
    """Runs the dashboard until SIGTERM or SIGINT."""
    dashboard = Dashboard(settings)
    server, port = create_server(settings, dashboard)
    stop_requested = threading.Event()
    stop_on_signals(stop_requested)
    dashboard.start()
    thread = threading.Thread(target=server.serve_forever, name="dashboard http", daemon=True)
    thread.start()
    log.info(
        "dashboard on http://%s:%d/ showing gateways %s, learner %s",
        settings.host,
        port,
        ", ".join(settings.gateways),
        settings.learner_address,
    )
    try:
        stop_requested.wait()
    finally:
        dashboard.stop()
        server.shutdown()
        server.server_close()
