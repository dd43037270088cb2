"""Small pieces with sharp edges: stop sequences on streamed text, and the address check for image URLs."""

from __future__ import annotations

import pytest

from inference.errors import APIError
from inference.remote_images import check_public_host
from inference.stops import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(piece) for piece in pieces) + matcher.flush()


def test_stop_sequence_split_across_pieces_is_cut_before_it():
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["hello E", "N", "D and more"]) == "hello "
    assert matcher.stopped


def test_text_that_only_looks_like_a_stop_start_is_released():
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["hello E", "ND", "X"]) == "hello "
    other = StopMatcher(["END"])
    assert feed_all(other, ["hello E", "xit"]) == "hello Exit"
    assert not other.stopped


def test_earliest_of_several_stop_sequences_wins():
    assert feed_all(StopMatcher(["zz", "b"]), ["a", "bzz"]) == "a"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://[::1]/",
        "http://localhost/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://[::ffff:10.0.0.1]/",
        "http://224.0.0.1/",
    ],
)
def test_non_public_addresses_are_refused_without_connecting(url):
    with pytest.raises(APIError) as refused:
        check_public_host(url)
    assert refused.value.status == 400


def test_a_public_address_literal_passes_the_check():
    check_public_host("http://93.184.216.34/cat.png")  # no connection is made by the check itself
