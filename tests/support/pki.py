"""A throwaway certificate authority for TLS tests, made with `cryptography`.

One CA signs a server certificate for 127.0.0.1/localhost and a client
certificate (for mutual TLS); everything is written as PEM files, the form
TF Serving's SSLConfig, grpc and ssl all take. EC keys keep it fast.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclasses.dataclass(frozen=True)
class Pki:
  """PEM file paths."""
  ca: Path
  server_cert: Path
  server_key: Path
  client_cert: Path
  client_key: Path


def write_pki(directory: Path) -> Pki:
  """A CA and the certificates it signs, in `directory`."""
  directory.mkdir(parents=True, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vit-serving test CA")])
  ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256()))

  def issue(name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
            ) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
      builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))

  server_cert, server_key = issue(
      "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
      [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
  client_cert, client_key = issue("test client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
  pki = Pki(*(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                      "client.key")))
  pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
  for path, data in ((pki.server_cert, server_cert), (pki.server_key, server_key),
                     (pki.client_cert, client_cert), (pki.client_key, client_key)):
    path.write_bytes(data)
  return pki
