"""TLS for the admission webhook: a CA and a serving certificate, made with ``cryptography``.

kopf can generate certificates itself, but through oscrypto, which cannot
read this OpenSSL; ``cryptography`` can. The CA goes into the
MutatingWebhookConfiguration's ``caBundle``, so the API server trusts the
serving certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class WebhookCerts:
    """PEM files of a webhook's TLS material."""

    ca: bytes
    cert: bytes
    key: bytes

    def write(self, folder: Path) -> tuple[Path, Path, Path]:
        """Write ca.crt, tls.crt and tls.key (private key readable by the owner only)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / "ca.crt", folder / "tls.crt", folder / "tls.key"
        for path, data in zip(paths, (self.ca, self.cert, self.key), strict=True):
            path.write_bytes(data)
        paths[2].chmod(0o600)
        return paths


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def generate(hosts: Sequence[str], days: int = 365) -> WebhookCerts:
    """A fresh CA and a serving certificate for ``hosts`` (DNS names or IP addresses)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("tokenomy-webhook-ca"))
        .issuer_name(_name("tokenomy-webhook-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = subject_alt_names(hosts)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return WebhookCerts(
        ca=ca.public_bytes(pem),
        cert=cert.public_bytes(pem),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses as IP SANs, everything else as DNS names."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def service_hosts(service: str, namespace: str) -> list[str]:
    """The names the API server may use for a webhook Service."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]


def usable(certs: WebhookCerts, hosts: Sequence[str], now: datetime.datetime) -> bool:
    """Whether stored certificates serve ``hosts`` for at least another 30 days."""
    try:
        cert = x509.load_pem_x509_certificate(certs.cert)
    except ValueError:
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    names |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    fresh = cert.not_valid_after_utc - now > datetime.timedelta(days=30)
    return fresh and set(hosts) <= names
