"""`hookvisor pki`: VDSM's layout, keys private, certificates chained to the CA."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hookvisor import pki


def hv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookvisor", "pki", *args],
                          capture_output=True, text=True, timeout=60)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_is_idempotent_and_keeps_the_ca(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    first = hv("init", "--dir", str(root), "--host-name", "host1.example",
               "--host-name", "192.0.2.7")
    assert first.returncode == 0, first.stderr
    assert "CA created" in first.stdout
    ca = (root / "certs" / "cacert.pem").read_bytes()
    host = load(root / "certs" / "hostcert.pem")
    for key in (root / "keys" / "hostkey.pem", root / "keys" / "cakey.pem"):
        assert key.stat().st_mode & 0o777 == 0o600
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    eku = host.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    host.verify_directly_issued_by(load(root / "certs" / "cacert.pem"))

    again = hv("init", "--dir", str(root))
    assert again.returncode == 0 and "CA kept" in again.stdout and "certificate kept" in \
        again.stdout
    assert (root / "certs" / "cacert.pem").read_bytes() == ca


def test_issue_a_client_certificate(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pki.init(root)
    out = hv("issue", "--dir", str(root), "--out", str(tmp_path / "engine"), "--cn", "engine")
    assert out.returncode == 0, out.stderr
    cert = load(tmp_path / "engine-cert.pem")
    assert (tmp_path / "engine-key.pem").stat().st_mode & 0o777 == 0o600
    cert.verify_directly_issued_by(load(root / "certs" / "cacert.pem"))
    assert "engine" in cert.subject.rfc4514_string()


def test_issue_without_a_ca_is_one_line(tmp_path: Path) -> None:
    out = hv("issue", "--dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"),
             "--cn", "x")
    assert out.returncode == 2
    assert out.stderr.startswith("hookvisor: pki issue: CA in ") and out.stderr.count("\n") == 1
