"""Opening a chip from a URL (hil.backend_url): a bad URL is one error in our words, naming
what is wrong with it, before anything is opened."""
import pytest

from drivers.errors import ConfigError, LinkError
from hil.backend_url import open_backend


@pytest.mark.parametrize("url, error, match", [
    ("sim://?rows=0", ConfigError, r"backend: sim:// option rows=0 .* needs at least 1"),
    ("sim://?cols=-3", ConfigError, r"sim:// option cols=-3"),
    ("sim://?arrays=two", ConfigError, r"bad integer in 'sim://\?arrays=two'"),
    ("sim://?colour=red", ConfigError, r"unknown sim:// option 'colour'"),
    ("socket://host:abc", LinkError, r"\[OPEN\] 'socket://host:abc': port 'abc' is not a TCP "
                                     r"port number \(1-65535\)$"),
    ("socket://127.0.0.1:99999", LinkError, r"port '99999' is not a TCP port number"),
    ("socket://127.0.0.1", LinkError, r"is not socket://HOST:PORT"),
    ("socket://127.0.0.1:7700?colour=red", LinkError,
     r"unknown socket:// option 'colour' \(known: baudrate, timeout, retries, reconnect, busy_poll_us\)"),
    ("socket://127.0.0.1:7700?timeout=soon", LinkError,
     r"bad value 'soon' for socket:// option timeout"),
])
def test_a_bad_url_is_one_error_naming_the_item(url, error, match):
    with pytest.raises(error, match=match) as e:
        open_backend(url)
    assert "pyserial" not in str(e.value) and "debug|info" not in str(e.value)


def test_socket_options_reach_the_driver():
    """socket:// takes the driver's options like serial:// does: with no retries and a short
    timeout, a port nobody listens on fails at once, with the operating system's reason."""
    with pytest.raises(LinkError, match=r"cannot open 'socket://127.0.0.1:9'.*refused"):
        open_backend("socket://127.0.0.1:9?timeout=0.2&retries=0")
