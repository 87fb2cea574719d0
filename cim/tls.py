"""TLS for listeners and channels: the PEM files of a ``TlsConfig``, read and
checked once, turned into gRPC credentials.

A listener serves with its certificate and, with ``require_client_cert``,
refuses callers without a certificate from the CA (mutual TLS). Channels verify
the peer with the CA and present the process's own certificate when it has one,
so routes and chat servers authenticate each other when their listeners
require client certificates. Without a ``TlsConfig`` everything is plaintext.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path

import grpc

from cim.config import TlsConfig
from cim.grpcutil import CHANNEL_OPTIONS

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


class Tls:
    """The PEM bytes of a ``TlsConfig``, checked: each file readable, the key
    matching the certificate, the CA file holding certificates."""

    def __init__(self, config: TlsConfig) -> None:
        self.config = config
        self.cert = _read(config.cert_file, "certificate") if config.cert_file else None
        self.key = _read(config.key_file, "private key") if config.key_file else None
        self.ca = _read(config.ca_file, "CA certificate") if config.ca_file else None
        _check(config)
        self._channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert is None or self.key is None:
            raise TlsError("a TLS listener needs a certificate and its private key")
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca,
            require_client_auth=self.config.require_client_cert,
        )

    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel that verifies the peer's certificate against the CA and
        the address's host (or ``server_name``)."""
        options: list[tuple[str, int | str]] = [*CHANNEL_OPTIONS]
        if self.config.server_name:
            options.append(("grpc.ssl_target_name_override", self.config.server_name))
        return grpc.aio.secure_channel(address, self._channel_credentials, options=options)


def load(config: TlsConfig | None) -> Tls | None:
    """The checked TLS material, or None for plaintext; ``TlsError`` if a file
    is missing, unreadable or not what it should be."""
    return Tls(config) if config is not None else None


def open_channel(address: str, tls: Tls | None) -> grpc.aio.Channel:
    """A TLS channel when ``tls`` is given, else a plaintext one."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return tls.channel(address)


def listener_tls(
    cert: str | None,
    key: str | None,
    ca: str | None,
    client_auth: bool,
    host: str,
    insecure_plaintext: bool,
) -> TlsConfig | None:
    """The TLS of a route or chat server listening on ``host``, from its
    ``--tls-*`` flags, checked and its files read: None for plaintext, which is
    only for loopback unless ``insecure_plaintext``. ``ValueError`` (``TlsError``
    for a file) naming the flags to fix when they do not fit together."""
    if cert is None and key is None:
        if ca is not None or client_auth:
            raise ValueError("--tls-ca and --tls-client-auth need --tls-cert and --tls-key")
        if not is_loopback(host) and not insecure_plaintext:
            raise ValueError(
                f"listening on {host} without TLS would send passwords, tokens and messages "
                "in clear: give --tls-cert and --tls-key (or --insecure-plaintext)"
            )
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if client_auth and ca is None:
        raise ValueError("--tls-client-auth needs --tls-ca, the CA that signs client certificates")
    return _checked(TlsConfig(cert, key, ca, client_auth))


def client_tls(
    use_tls: bool,
    ca: str | None,
    cert: str | None,
    key: str | None,
    server_name: str | None,
) -> TlsConfig | None:
    """The TLS of a client from its flags: None (plaintext) unless ``use_tls``
    or any other of them is given; checked and its files read. ``ValueError``
    (``TlsError`` for a file) naming the flags to fix."""
    if not use_tls and all(value is None for value in (ca, cert, key, server_name)):
        return None
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    return _checked(TlsConfig(cert, key, ca, server_name=server_name))


def _checked(config: TlsConfig) -> TlsConfig:
    load(config)
    return config


def is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def warn_if_exposed(what: str, host: str, tls: Tls | None) -> None:
    """Plaintext is for loopback: listening anywhere else without TLS is logged."""
    if tls is None and not is_loopback(host):
        log.warning(
            "%s listens on %s without TLS: messages, passwords and session tokens cross the "
            "network in plaintext (give --tls-cert and --tls-key)",
            what,
            host,
        )


def describe(tls: Tls | None) -> str:
    """How a listener is secured, for its start-up log line."""
    if tls is None:
        return "plaintext"
    return "TLS, client certificates required" if tls.config.require_client_cert else "TLS"


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{what} {path} is not a PEM file")
    return data


def _check(config: TlsConfig) -> None:
    """Lets OpenSSL parse the files first, for an error that names the file
    (gRPC reports bad PEM only at bind time or in the handshake, and vaguely)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.cert_file and config.key_file:
        try:
            context.load_cert_chain(config.cert_file, config.key_file, password=_no_password)
        except (ssl.SSLError, _EncryptedKey) as exc:
            raise TlsError(
                f"certificate {config.cert_file} and private key {config.key_file} do not "
                f"load as a pair: {_reason(exc)}"
            ) from None
    if config.ca_file:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except ssl.SSLError as exc:
            raise TlsError(f"CA certificate {config.ca_file} is unusable: {_reason(exc)}") from None


class _EncryptedKey(Exception):
    def __str__(self) -> str:
        return "the private key is encrypted; give it unencrypted (gRPC cannot ask for a password)"


def _no_password() -> bytes:
    raise _EncryptedKey


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc)
