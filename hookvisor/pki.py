"""A small PKI for a lab or for tests, laid out as VDSM's /etc/pki/vdsm.

<dir>/certs/cacert.pem, <dir>/keys/cakey.pem (0600): the CA;
<dir>/certs/hostcert.pem, <dir>/keys/hostkey.pem (0600): this host, which the
agent presents as a server and its own client presents to other agents.
Every certificate it issues carries serverAuth and clientAuth, so a host
certificate is good for both ends of agent-to-agent calls (as VDSM's is).
Built with `cryptography`; nothing shells out to openssl.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 825


class PkiError(Exception):
    """A PKI file that cannot be read or written; the message names it."""


@dataclass(frozen=True)
class PkiLayout:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "certs" / "cacert.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "keys" / "cakey.pem"

    @property
    def host_cert(self) -> Path:
        return self.root / "certs" / "hostcert.pem"

    @property
    def host_key(self) -> Path:
        return self.root / "keys" / "hostkey.pem"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


# EC P-256: a handshake costs a fraction of an RSA-3072 one, and every TLS
# stack a VDSM-era client uses speaks it.
def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hookvisor"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new file of a name nobody could have made first (mkstemp: O_EXCL, 0600),
    # renamed into place: never one a local user planted and holds open, in a
    # shared directory such as /tmp.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o600 if private else 0o644)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(layout: PkiLayout, cn: str = "hookvisor CA") -> None:
    """A new CA key and self-signed certificate (overwrites)."""
    key = _new_key()
    name = _name(cn)
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(layout.ca_key, _key_pem(key), private=True)
    _write(layout.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _load_ca(layout: PkiLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), None)
    except (OSError, ValueError) as e:
        raise PkiError(f"CA in {layout.root}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"CA key {layout.ca_key}: not an EC key made by hookvisor pki")
    return cert, key


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def issue(layout: PkiLayout, cert_path: Path, key_path: Path, cn: str,
          names: list[str] | None = None) -> Issued:
    """A certificate for `cn` (SAN: `names`, default [cn]) signed by the CA in `layout`."""
    ca_cert, ca_key = _load_ca(layout)
    key = _new_key()
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_san(names or [cn]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return Issued(cert_path, key_path)


def init(root: Path, host_names: list[str] | None = None) -> tuple[bool, bool, Issued]:
    """CA and host certificate, each kept if present.

    Returns (CA made, host certificate made, the host certificate). Naming
    `host_names` issues the host certificate again for them, with the same CA.
    """
    layout = PkiLayout(root)
    made_ca = made_host = False
    if not (layout.ca_cert.exists() and layout.ca_key.exists()):
        create_ca(layout)
        made_ca = True
    host = Issued(layout.host_cert, layout.host_key)
    if made_ca or host_names or not (host.cert.exists() and host.key.exists()):
        names = host_names or ["localhost", "127.0.0.1", "::1"]
        host = issue(layout, layout.host_cert, layout.host_key, names[0], names)
        made_host = True
    return made_ca, made_host, host


def issue_client(root: Path, prefix: Path, cn: str) -> Issued:
    """PREFIX-cert.pem and PREFIX-key.pem for a client named `cn`."""
    return issue(PkiLayout(root), Path(f"{prefix}-cert.pem"), Path(f"{prefix}-key.pem"), cn)
