"""The test hosts take their Debian archive from the machine's own apt sources, not from the code."""

from __future__ import annotations

from tests.lab.hosts import SUITE, machine_debian_mirror


def test_mirror_comes_from_a_deb822_source(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.internal/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        f"Types: deb\n# a comment: here\nURIs: http://mirror.example.internal/debian\nSuites: {SUITE} {SUITE}-updates\n"
        "Components: main contrib\n"
    )
    assert machine_debian_mirror(tmp_path) == "http://mirror.example.internal/debian"


def test_mirror_comes_from_a_one_line_source(tmp_path):
    (tmp_path / "sources.list").write_text(
        f"# deb http://commented.example.internal/debian {SUITE} main\n"
        f"deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.example.internal/debian {SUITE} main\n"
    )
    assert machine_debian_mirror(tmp_path) == "http://mirror.example.internal/debian"


def test_no_debian_source_means_no_mirror(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.example.internal/ubuntu noble main\n")
    assert machine_debian_mirror(tmp_path) is None
