"""Mutual TLS for Dask: the certificates of every cluster batchnlp starts, and the client side of
a cluster a user brings (``--scheduler tls://...``).

Dask runs whatever pickled function a client sends, so a scheduler others can reach (other
machines, or other users of this one on loopback) must refuse anyone the job did not issue a
certificate to. A job makes its own certificate authority as its cluster starts (:func:`issue`;
the embedded cluster's, or a multi-node job's): one CA, one certificate for every scheduler,
workers, nannies and driver, all signed by it; the CA's private key is dropped once it has
signed, so no further certificate can ever be made for the job. ``require_encryption`` stops any
part of the job from falling back to plain ``tcp://``; a client with another CA's certificate, or
none, fails the TLS handshake. The PEM text stays in memory; distributed writes a certificate and
key to a private (0700) temporary directory only for the moment OpenSSL loads them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from batchnlp.errors import SpecError

# Longer than any attempt of a job (AWS Batch's attemptDurationSeconds is per attempt); an
# hour back for clocks that differ between nodes.
VALIDITY = datetime.timedelta(days=30)
CLOCK_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True, repr=False)
class JobCertificates:
    """A job's CA certificate and the one certificate and key its every process presents (PEM text)."""

    ca: str
    cert: str
    key: str

    def __repr__(self) -> str:  # never the key in a log or a traceback
        return "JobCertificates(<PEM>)"

    def security(self) -> Any:
        """A :class:`distributed.Security` for every role, requiring TLS on every connection."""
        from distributed import Security

        roles = {f"tls_{role}_{part}": pem for role in ("client", "scheduler", "worker") for part, pem in self._pair()}
        return Security(tls_ca_file=self.ca, require_encryption=True, **roles)

    def dask_config(self) -> dict[str, Any]:
        """Dask's TLS settings for a client of the job (``dask.config.set``): what ``Security()`` reads."""
        tls = "distributed.comm.tls"
        return {
            f"{tls}.ca-file": self.ca,
            f"{tls}.client.cert": self.cert,
            f"{tls}.client.key": self.key,
            "distributed.comm.require-encryption": True,
        }

    def _pair(self) -> tuple[tuple[str, str], ...]:
        return (("cert", self.cert), ("key", self.key))

    def to_dict(self) -> dict[str, str]:
        return {"ca": self.ca, "cert": self.cert, "key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobCertificates:
        return cls(data["ca"], data["cert"], data["key"])


def issue(name: str) -> JobCertificates:
    """A new CA for job ``name`` and the certificate of its processes (EC P-256: milliseconds to make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"batchnlp job CA {name}"[:64])])
    node_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"batchnlp job {name}"[:64])])

    def signed(subject: Any, public_key: Any, extensions: list[tuple[Any, bool]]) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    def usage(sign: bool) -> Any:  # a CA signs certificates; a node signs handshakes (ECDSA) and agrees keys (ECDH)
        flags = dict.fromkeys(
            ("content_commitment", "data_encipherment", "encipher_only", "decipher_only", "key_encipherment"), False
        )
        return x509.KeyUsage(
            digital_signature=not sign, key_agreement=not sign, key_cert_sign=sign, crl_sign=sign, **flags
        )

    authority = x509.BasicConstraints(ca=True, path_length=0)
    ca = signed(ca_name, ca_key.public_key(), [(authority, True), (usage(True), True)])
    both_ways = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    node = signed(
        node_name,
        node_key.public_key(),
        [(x509.BasicConstraints(ca=False, path_length=None), True), (usage(False), True), (both_ways, False)],
    )
    pem = serialization.Encoding.PEM
    key = node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return JobCertificates(ca.public_bytes(pem).decode(), node.public_bytes(pem).decode(), key.decode())


def client_security(scheduler: str | None, ca_file: str | None, cert: str | None, key: str | None) -> Any:
    """The :class:`distributed.Security` a client of ``scheduler`` connects with, or None for a plain one.

    The files given (``--tls-ca-file``, ``--tls-cert``, ``--tls-key``), else Dask's own
    ``distributed.comm.tls`` config (``~/.config/dask/*.yaml``, ``DASK_DISTRIBUTED__COMM__TLS__...``
    variables), which is where users of a secured cluster keep them already. A ``tls://`` address
    with neither is a :class:`SpecError` naming both ways, rather than a handshake error later.
    """
    if not scheduler or not scheduler.startswith("tls://"):
        return None
    from distributed import Security

    for flag, path in (("--tls-ca-file", ca_file), ("--tls-cert", cert), ("--tls-key", key)):
        if path and not os.path.isfile(path):
            raise SpecError(f"{flag} {path}: no such file")
    given = {"tls_ca_file": ca_file, "tls_client_cert": cert, "tls_client_key": key}
    security = Security(require_encryption=True, **{name: value for name, value in given.items() if value})
    if not (security.tls_ca_file and security.tls_client_cert):
        raise SpecError(
            f"--scheduler {scheduler} needs this client's TLS files: give --tls-ca-file CA.pem --tls-cert CERT.pem "
            "--tls-key KEY.pem (spec keys tls_ca_file, tls_cert, tls_key), or set them in Dask's config "
            "(distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and .key)"
        )
    return security
