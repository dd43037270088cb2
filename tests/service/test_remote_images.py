"""Remote image fetches connect to the address that was checked, keep the URL's Host, and end at one deadline.

Real HTTP servers on loopback stand in for the internet: a resolver stand-in maps test names to them, and
an address check that allows only 127.0.0.1 stands in for "public" (127.0.0.2 plays the private network).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inference.errors import APIError
from inference.remote_images import FETCH_WORKERS, check_public_host, fetch_remote_image, is_public_address
from tests.lab.chat import png_bytes

PUBLIC, PRIVATE = "127.0.0.1", "127.0.0.2"
IMAGE = png_bytes()


class Recorder(BaseHTTPRequestHandler):
    """GET /cat.png: the image; /moved: a redirect to /cat.png on internal.example; /slow: a body that trickles."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append((self.path, self.headers["Host"]))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", f"http://internal.example:{self.server.server_port}/cat.png")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            while not self.server.stopping.is_set():
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

    def log_message(self, *args) -> None:
        pass


def serve(address: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), Recorder)
    server.daemon_threads = True
    server.seen, server.stopping = [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    public = serve(PUBLIC, 0)
    private = serve(PRIVATE, public.server_port)
    yield public, private
    for server in (public, private):
        server.stopping.set()
        server.shutdown()
        server.server_close()


class RebindingResolver:
    """images.example is public at the first lookup and private afterwards; internal.example is private."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host == "images.example":
            return [PUBLIC if self.lookups.count(host) == 1 else PRIVATE]
        if host == "internal.example":
            return [PRIVATE]
        raise OSError("unknown host")


def only_public(address) -> bool:
    return str(address) == PUBLIC


def test_fetch_connects_to_the_checked_address_with_the_urls_host(servers):
    public, private = servers
    resolver = RebindingResolver()
    url = f"http://images.example:{public.server_port}/cat.png"
    assert fetch_remote_image(url, 1 << 20, 10, resolver, only_public) == IMAGE
    assert public.seen[0] == ("/cat.png", f"images.example:{public.server_port}")
    assert private.seen == []


def test_second_lookup_that_rebinds_to_a_private_address_is_refused(servers):
    public, private = servers
    resolver = RebindingResolver()
    url = f"http://images.example:{public.server_port}/cat.png"
    fetch_remote_image(url, 1 << 20, 10, resolver, only_public)
    with pytest.raises(APIError) as refused:
        fetch_remote_image(url, 1 << 20, 10, resolver, only_public)
    assert refused.value.code == "forbidden_image_url"
    assert resolver.lookups == ["images.example", "images.example"]  # one lookup per fetch, none by the client
    assert private.seen == []


def test_redirect_to_a_private_address_is_refused_before_connecting(servers):
    public, private = servers
    with pytest.raises(APIError) as refused:
        fetch_remote_image(
            f"http://images.example:{public.server_port}/moved", 1 << 20, 10, RebindingResolver(), only_public
        )
    assert refused.value.code == "forbidden_image_url"
    assert [path for path, _ in public.seen] == ["/moved"]
    assert private.seen == []


def test_one_deadline_covers_a_body_that_never_ends(servers):
    public, _ = servers
    with pytest.raises(APIError) as refused:
        fetch_remote_image(
            f"http://images.example:{public.server_port}/slow", 1 << 20, 1.0, RebindingResolver(), only_public
        )
    assert refused.value.status == 400 and refused.value.code == "image_fetch_failed"
    assert "longer" in refused.value.message


def test_credentials_in_an_image_url_are_refused():
    with pytest.raises(APIError) as refused:
        check_public_host("http://user:secret@images.example/cat.png", RebindingResolver(), only_public)
    assert refused.value.code == "unsupported_image_url"


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "2002:a9fe:a9fe::1",
        "::7f00:1",
        "::808:808",
        "fec0::1",
        "::ffff:192.168.0.1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    ],
)
def test_ipv6_forms_that_reach_private_or_deprecated_space_are_not_public(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"])
def test_ipv6_forms_of_public_addresses_stay_public(address):
    assert is_public_address(ipaddress.ip_address(address))


def test_fetches_beyond_the_pool_wait_and_the_wait_counts_against_their_deadline(servers):
    public, _ = servers
    slow_url = f"http://images.example:{public.server_port}/slow"
    outcomes: list[str] = []

    def slow_fetch() -> None:
        try:
            fetch_remote_image(slow_url, 1 << 20, 5.0, lambda host, port: [PUBLIC], only_public)
        except APIError as exc:
            outcomes.append(exc.code)

    busy = [threading.Thread(target=slow_fetch) for _ in range(FETCH_WORKERS)]
    for thread in busy:
        thread.start()
    while len([path for path, _ in public.seen if path == "/slow"]) < FETCH_WORKERS:
        time.sleep(0.01)
    with pytest.raises(APIError) as waited:  # this image would come at once, but no fetch slot frees in time
        fetch_remote_image(
            f"http://images.example:{public.server_port}/cat.png",
            1 << 20,
            0.5,
            lambda host, port: [PUBLIC],
            only_public,
        )
    assert "longer" in waited.value.message
    for thread in busy:
        thread.join()
    assert outcomes == ["image_fetch_failed"] * FETCH_WORKERS
    assert [path for path, _ in public.seen].count("/cat.png") == 0
