"""Who may reach the live view: loopback by default, the token for every request with
--listen; BokehJS from the installed package, never from the internet; the command line."""
import http.client
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bokeh")

from hil.watch.follower import LogFollower  # noqa: E402
from hil.watch.server import WatchServer  # noqa: E402
from watch_logs import finished_log  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    return finished_log(str(tmp_path_factory.mktemp("watch") / "done.h5"))


def _serve(path, listen=None):
    f = LogFollower(path)
    f.refresh()
    return WatchServer(f, listen=listen, port=0).start_in_thread()


@pytest.fixture(scope="module")
def local(log_path):
    s = _serve(log_path)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gated(log_path):
    s = _serve(log_path, listen="127.0.0.1")
    yield s
    s.stop()


def _get(server, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", server.access.port, timeout=30)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, dict(r.getheaders()), body


def _ws_status(server, headers):
    """Status of a websocket handshake on Bokeh's /ws (101: accepted)."""
    h = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
         "Origin": f"http://127.0.0.1:{server.access.port}", **headers}
    return _get(server, "/ws", h)[0]


def test_by_default_it_listens_on_loopback_without_a_token(local):
    assert local.access.host == "127.0.0.1" and local.access.token is None
    assert local.url == f"http://127.0.0.1:{local.access.port}/"
    status, _, body = _get(local, "/")
    assert status == 200 and b"bokeh" in body


def test_the_page_loads_nothing_from_the_internet(local):
    _, _, body = _get(local, "/")
    html = body.decode()
    urls = set(re.findall(r"""(?:src|href)=["']([^"']+)""", html))
    assert urls and all(u.startswith("/static/") for u in urls), urls
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", html)
    js = next(u for u in urls if "bokeh.min.js" in u)
    status, _, served = _get(local, js)
    import bokeh
    installed = Path(bokeh.__file__).parent / "server" / "static" / "js" / "bokeh.min.js"
    assert status == 200 and served == installed.read_bytes()


def test_a_request_naming_another_host_is_refused_on_loopback(local):
    # a page elsewhere reaching 127.0.0.1 through a rebound DNS name
    status, _, body = _get(local, "/", {"Host": f"evil.example:{local.access.port}"})
    assert status == 403 and b"localhost" in body
    assert _get(local, "/", {"Host": f"localhost:{local.access.port}"})[0] == 200


def test_with_listen_every_request_without_the_token_is_refused(gated):
    token = gated.access.token
    assert token and f"?token={token}" in gated.url
    for path in ("/", "/static/js/bokeh.min.js", "/favicon.ico", "/autoload.js",
                 "/?token=wrong"):
        status, _, body = _get(gated, path)
        assert status == 403 and b"needs its token" in body, path
    assert _ws_status(gated, {}) == 403
    wrong = {"Cookie": f"{gated.access.cookie}=nope"}
    assert _get(gated, "/", wrong)[0] == 403 and _ws_status(gated, wrong) == 403


def test_the_token_url_sets_a_cookie_that_admits_every_later_request(gated):
    status, headers, _ = _get(gated, f"/?token={gated.access.token}")
    assert status == 302 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{gated.access.cookie}={gated.access.token}")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert _get(gated, "/", jar)[0] == 200
    assert _get(gated, "/static/js/bokeh.min.js", jar)[0] == 200
    assert _ws_status(gated, jar) == 101
    assert _get(gated, f"/static/js/bokeh.min.js?token={gated.access.token}")[0] == 200


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hil.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def test_watch_has_help_and_refuses_what_is_not_a_log(tmp_path):
    r = _cli("watch", "--help")
    assert r.returncode == 0 and "--listen" in r.stdout and "token" in r.stdout
    (tmp_path / "x.h5").write_text("not hdf5")
    r = _cli("watch", str(tmp_path / "x.h5"))
    assert r.returncode == 1 and "not a pcm-hil run log" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,match", [
    (["--listen", "0.0.0.0"], "--listen: needs --watch"),
    (["--port", "8000"], "--port: needs --watch"),
    (["--watch", "--no-log"], "--watch: cannot be combined with --no-log"),
    (["--watch", "--dry-run"], "--watch: cannot be combined with --dry-run"),
])
def test_train_refuses_live_view_options_that_cannot_apply(tmp_path, args, match):
    r = _cli("train", "--config", "configs/quick.yaml", "--run", str(tmp_path / "r.h5"),
             *args)
    assert r.returncode == 1 and match in r.stderr, r.stderr
    assert not (tmp_path / "r.h5").exists()


def test_watch_serves_until_ctrl_c(log_path):
    p = subprocess.Popen([sys.executable, "-m", "hil.cli", "watch", log_path, "--port", "0"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stdout.readline() for _ in range(2)]
        url = re.search(r"(http://\S+)", lines[1]).group(1)
        assert url.startswith("http://127.0.0.1:")
        host, port = url[len("http://"):].rstrip("/").split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        c.request("GET", "/")
        assert c.getresponse().status == 200
    finally:
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert os.path.exists(log_path)
