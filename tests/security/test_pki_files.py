"""A private key is written where nobody else can have the file open.

`hookvisor pki issue --out PREFIX` wrote PREFIX-key.pem through a fixed
temporary name, PREFIX-key.pem.tmp, opened without O_EXCL: with PREFIX in a
shared directory (/tmp), a local user who created that name first (and kept
it open) got the key written into a file of their own, which then became the
client key (one that the host's CA trusts: root through the API).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hookvisor import pki


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    pki.init(root)
    return root


def test_a_planted_temporary_file_never_receives_the_key(ca: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    planted = shared / "client-key.pem.tmp"
    planted.write_bytes(b"")
    planted.chmod(0o666)
    os.chown(planted, 65534, 65534)  # nobody's, as a local user would leave it
    reader = os.open(planted, os.O_RDONLY)
    try:
        issued = pki.issue_client(ca, shared / "client", "c")
        assert os.read(reader, 4096) == b"", "the key went into the planted file"
    finally:
        os.close(reader)
    st = issued.key.stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    assert b"PRIVATE KEY" in issued.key.read_bytes()
