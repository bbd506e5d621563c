"""The live view's web server: a Bokeh server, gated, with BokehJS served from the package.

Who may connect:

- By default the server listens on 127.0.0.1 only and needs no token; requests must then
  name the server by a loopback host (`localhost`, `127.0.0.1`, `[::1]`), so that a web page
  elsewhere cannot reach it through a DNS name rebound to this machine.
- With `listen=ADDRESS` (any address, `pcm-hil watch --listen`), every request needs the
  token printed at start, as with Jupyter: the URL carries `?token=...`; the first page
  request with it sets a cookie (HttpOnly, SameSite=Strict) and redirects to the URL without
  it; every later request (page, websocket, static JavaScript, ...) must carry that cookie
  or the token. Anything else is refused with 403 before Bokeh sees it.

The gate sits in `find_handler`, the one place tornado routes every request through, so
that no route (Bokeh's static files are not covered by its own auth hooks) is left out.
BokehJS comes from the installed bokeh package (`/static/`), never from a CDN: the page
works on a bench with no internet.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence
from urllib.parse import urlencode

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.resources import Resources
from bokeh.server.server import BaseServer
from bokeh.server.tornado import BokehTornado
from bokeh.server.views.static_handler import StaticHandler
from tornado import netutil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.web import RequestHandler

from drivers.errors import ConfigError
from hil.watch.follower import LogFollower
from hil.watch.page import PageFactory, StopHandler, page_factory

log = logging.getLogger("pcm_hil.watch")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5006
PORT_TRIES = 10
TOKEN_PARAM = "token"
PAGE_BUNDLES = ["bokeh", "bokeh-widgets", "bokeh-tables"]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


@dataclass(frozen=True)
class Access:
    """Who may connect: the address listened on, and the token (None: none needed)."""

    host: str
    port: int
    token: Optional[str]

    @property
    def cookie(self) -> str:
        return f"pcm_hil_watch_{self.port}"

    def url(self, host: Optional[str] = None) -> str:
        h = host or self.host
        if h in ("0.0.0.0", "::", ""):
            h = socket.gethostname()
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"
        q = f"?{urlencode({TOKEN_PARAM: self.token})}" if self.token else ""
        return f"http://{h}:{self.port}/{q}"

    def allowed(self, request: Any) -> str:
        """'ok', 'login' (a valid token in the query: set the cookie) or 'refuse'."""
        if self.token is None:
            host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") \
                else request.host.split("]")[0] + "]"
            return "ok" if host in LOOPBACK_NAMES else "refuse"
        given = request.query_arguments.get(TOKEN_PARAM, [b""])[-1].decode("utf-8", "replace")
        if given and hmac.compare_digest(given, self.token):
            return "login" if request.method == "GET" and not request.path.endswith("/ws") \
                and "/static/" not in request.path else "ok"
        morsel = request.cookies.get(self.cookie)
        if morsel is not None and hmac.compare_digest(morsel.value, self.token):
            return "ok"
        return "refuse"


class _Refused(RequestHandler):
    def initialize(self, reason: str) -> None:
        self.reason = reason

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self.reason + "\n")


class _Login(RequestHandler):
    """A valid `?token=`: remember it in a cookie, then show the URL without it."""

    def initialize(self, access: Access) -> None:
        self.access = access

    def prepare(self) -> None:
        self.set_cookie(self.access.cookie, self.access.token or "", httponly=True,
                        samesite="Strict", path="/")
        rest = {k: v[-1].decode() for k, v in self.request.query_arguments.items()
                if k != TOKEN_PARAM}
        self.redirect(self.request.path + (f"?{urlencode(rest)}" if rest else ""))


class _GatedTornado(BokehTornado):
    """BokehTornado behind the access gate, with BokehJS served by this server."""

    def __init__(self, *a: Any, access: Access, **k: Any) -> None:
        self.access = access
        super().__init__(*a, **k)

    def find_handler(self, request: Any, **kwargs: Any) -> Any:
        verdict = self.access.allowed(request)
        if verdict == "refuse":
            why = ("this live view needs its token: open the URL printed when it started "
                   "(...?token=...)" if self.access.token else
                   "this live view answers only to localhost / 127.0.0.1")
            return self.get_handler_delegate(request, _Refused, {"reason": why})
        if verdict == "login":
            return self.get_handler_delegate(request, _Login, {"access": self.access})
        return super().find_handler(request, **kwargs)

    def resources(self, absolute_url: Any = None) -> Resources:
        # Always from this server's /static/ (whatever BOKEH_RESOURCES says): no CDN. Only
        # the bundles the page uses: MathJax (1.8 MB) and WebGL would cost every page load
        # their parsing.
        return Resources(mode="server", root_url="/", components=PAGE_BUNDLES,
                         path_versioner=StaticHandler.append_version)


def bind(listen: Optional[str], port: int) -> Sequence[socket.socket]:
    """Bind the listening sockets: `port` (0: any free one), or the next free one of
    PORT_TRIES when the default port is taken."""
    host = listen or DEFAULT_HOST
    tries = PORT_TRIES if port == DEFAULT_PORT else 1
    last: Optional[OSError] = None
    for p in range(port, port + tries):
        try:
            return netutil.bind_sockets(p, host)
        except OSError as e:
            last = e
    key = "--listen" if "ssign" in str(last) or "not known" in str(last) else "--port"
    raise ConfigError(f"cannot listen on {host}:{port}: {last}", key=key)


class WatchServer:
    """A live view of one run log, served until `stop()`."""

    def __init__(self, follower: LogFollower, *, listen: Optional[str] = None,
                 port: int = DEFAULT_PORT, on_stop: Optional[StopHandler] = None) -> None:
        self.follower = follower
        self.on_stop = on_stop
        self._listen = listen
        self._port = port
        self._server: Optional[BaseServer] = None
        self._thread: Optional[threading.Thread] = None
        self.access: Optional[Access] = None
        self.pages: Optional[PageFactory] = None

    def _make(self) -> BaseServer:
        sockets = bind(self._listen, self._port)
        port = sockets[0].getsockname()[1]
        host = self._listen or DEFAULT_HOST
        token = secrets.token_urlsafe(24) if self._listen is not None else None
        self.access = Access(host, port, token)
        origins = ["*"] if token else [f"localhost:{port}", f"127.0.0.1:{port}"]
        self.pages = page_factory(self.follower, self._stop_handler())
        app = Application(FunctionHandler(self.pages))
        tornado_app = _GatedTornado({"/": app}, access=self.access,
                                    extra_websocket_origins=origins, use_index=False,
                                    redirect_root=False)
        http = HTTPServer(tornado_app, xheaders=False)
        http.add_sockets(sockets)
        return BaseServer(IOLoop.current(), tornado_app, http)

    def _stop_handler(self) -> Optional[StopHandler]:
        if self.on_stop is None:
            return None
        on_stop = self.on_stop

        def stop(reason: str) -> None:
            log.warning("stop requested from the live view")
            on_stop(reason)
        return stop

    @property
    def url(self) -> str:
        assert self.access is not None, "not started"
        return self.access.url()

    def start(self) -> "WatchServer":
        """Listen on the current thread's IO loop (run it with `run_forever`)."""
        self._server = self._make()
        self._server.start()
        # the first page is built before a browser asks for it
        IOLoop.current().add_callback(self.pages.prepare)
        return self

    def run_forever(self) -> None:
        IOLoop.current().start()

    def start_in_thread(self) -> "WatchServer":
        """Serve from a thread of its own (tests, benchmarks); returns once listening."""
        ready = threading.Event()
        error: Dict[str, BaseException] = {}

        def run() -> None:
            asyncio.set_event_loop(asyncio.new_event_loop())
            try:
                self.start()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                error["e"] = e
                ready.set()
                return
            self._loop = IOLoop.current()
            ready.set()
            self._loop.start()

        self._thread = threading.Thread(target=run, name="pcm-hil-watch-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if "e" in error:
            raise error["e"]
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._thread is not None:
            loop = self._loop

            def halt() -> None:
                server.stop(wait=False)
                loop.stop()
            loop.add_callback(halt)
            self._thread.join(timeout=10)
            self._thread = None
        else:
            server.stop(wait=False)


def serve(path: str, *, listen: Optional[str] = None, port: int = DEFAULT_PORT,
          on_stop: Optional[StopHandler] = None,
          poll_s: Optional[float] = None) -> WatchServer:
    """Follow `path` and serve its page (on this thread's IO loop; see `run_forever`)."""
    follower = LogFollower(path)
    follower.refresh()
    follower.start(*(() if poll_s is None else (poll_s,)))
    return WatchServer(follower, listen=listen, port=port, on_stop=on_stop).start()


__all__ = ["Access", "DEFAULT_HOST", "DEFAULT_PORT", "WatchServer", "bind", "serve"]
