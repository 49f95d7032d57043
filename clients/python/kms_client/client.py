"""``KmsClient``: the data plane of the KMS (Encrypt, Decrypt, GenerateDataKey, ReEncrypt) over
mutual TLS, with typed results and one exception type for every refusal."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable, Dict, Mapping, Optional, Type, TypeVar, Union

import grpc

from . import _stubs

PathLike = Union[str, "os.PathLike[str]"]
Context = Optional[Mapping[str, str]]

#: Environment variables read by ``KmsClient.from_env``: the same as ``kms-cli``'s.
ENV_ADDR = "KMS_ADDR"
ENV_CA_CERT = "KMS_CA_CERT"
ENV_CLIENT_CERT = "KMS_CLIENT_CERT"
ENV_CLIENT_KEY = "KMS_CLIENT_KEY"
ENV_SERVER_NAME = "KMS_TLS_SERVER_NAME"


class KmsError(Exception):
    """The KMS refused a call, or no KMS answered.

    ``code`` is the gRPC status code's name (``"NOT_FOUND"``, ``"PERMISSION_DENIED"``,
    ``"INVALID_ARGUMENT"``, ``"FAILED_PRECONDITION"``, ``"UNAVAILABLE"``, …) and ``message``
    the server's message (``str(e)`` is ``"CODE: message"``). Messages never hold key
    material or plaintext.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class KmsConnectError(KmsError):
    """No connection to a KMS could be made (address, TCP, TLS handshake, certificates).
    Its ``code`` is ``"UNAVAILABLE"``."""


class KmsConfigError(ValueError):
    """A local setting is wrong (an unreadable certificate file, a bad address, a missing
    environment variable): nothing was sent."""


@dataclass(frozen=True)
class EncryptResult:
    """A ciphertext and the key version that sealed it. ``ciphertext`` is raw bytes;
    ``kms-cli`` reads and writes them as one line of standard base64."""

    ciphertext: bytes
    key: str
    version: int


@dataclass(frozen=True)
class DecryptResult:
    """A plaintext and the key version that opened it (``plaintext`` is left out of
    ``repr``)."""

    plaintext: bytes = field(repr=False)
    key: str
    version: int


@dataclass(frozen=True)
class DataKey:
    """A fresh AES-256 data key: ``plaintext`` (32 bytes, left out of ``repr``: use it, then
    drop it) and ``ciphertext``, the same key encrypted under ``key`` (``decrypt`` unwraps
    it)."""

    plaintext: bytes = field(repr=False)
    ciphertext: bytes
    key: str
    version: int


@dataclass(frozen=True)
class ReEncryptResult:
    """The new ciphertext, the key version that opened the old one (``source_*``) and the
    one that sealed the new one."""

    ciphertext: bytes
    source_key: str
    source_version: int
    key: str
    version: int


def _read(path: PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KmsConfigError(f"cannot read {what} {os.fspath(path)}: {e.strerror}") from e


def _target(addr: str) -> str:
    """``host:port`` from ``https://host:port`` or ``host:port`` (as ``kms-cli --addr``)."""
    if "://" in addr:
        scheme, rest = addr.split("://", 1)
        if scheme != "https":
            raise KmsConfigError(
                f"address {addr!r}: the KMS speaks only TLS, use https://HOST:PORT or HOST:PORT"
            )
        addr = rest
    addr = addr.rstrip("/")
    if not addr or "/" in addr:
        raise KmsConfigError(f"address {addr!r} is not HOST:PORT")
    return addr


def _bytes(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        raise TypeError(f"{name} must be bytes, not str: encode it first (e.g. .encode())")
    return bytes(value)


def _context(context: Context) -> Dict[str, str]:
    return dict(context) if context else {}


T = TypeVar("T")


class KmsClient:
    """A connection to the KMS over mutual TLS (TLS 1.3: the server accepts nothing older).

    ``addr`` is ``https://HOST:PORT`` or ``HOST:PORT``; ``ca`` the CA certificate (PEM) the
    server's certificate must chain to; ``cert`` and ``key`` this client's certificate and
    private key (PEM): the server names the caller (its policy *principal*) from it.
    ``server_name`` is the name to verify in the server's certificate when it is not the host
    of ``addr`` (e.g. ``"localhost"`` when connecting to ``127.0.0.1``). ``totp`` is sent as
    the ``x-kms-totp`` header, for policy rules that require a second factor.

    The constructor waits until the connection is up (at most ``connect_timeout`` seconds)
    and raises ``KmsConnectError`` otherwise; each call waits at most ``timeout`` seconds.
    Every refusal raises ``KmsError``. Use it as a context manager, or call ``close()``.

    Example::

        with KmsClient("https://127.0.0.1:8200", "ca.pem", "app.pem", "app-key.pem") as kms:
            sealed = kms.encrypt("payments/card-tokens", b"4111...", {"tenant": "acme"})
            plain = kms.decrypt(sealed.ciphertext, {"tenant": "acme"}).plaintext
    """

    def __init__(
        self,
        addr: str,
        ca: PathLike,
        cert: PathLike,
        key: PathLike,
        server_name: Optional[str] = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        totp: Optional[str] = None,
    ) -> None:
        target = _target(addr)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "CA certificate"),
            private_key=_read(key, "client key"),
            certificate_chain=_read(cert, "client certificate"),
        )
        options = []
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._pb2, grpc_mod = _stubs.load()
        self._addr = addr
        self._timeout = timeout
        self._metadata = (("x-kms-totp", totp.strip()),) if totp else None
        self._channel = grpc.secure_channel(target, credentials, options=options)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise KmsConnectError(
                "UNAVAILABLE",
                f"no connection to {addr} within {connect_timeout:g} s: check the address and "
                "that the server runs, the CA certificate, the client certificate and key, and "
                "server_name",
            ) from None
        self._crypto = grpc_mod.CryptoStub(self._channel)

    @classmethod
    def from_env(cls, **kwargs: Any) -> "KmsClient":
        """Connects with the settings ``kms-cli`` reads: ``KMS_ADDR``, ``KMS_CA_CERT``,
        ``KMS_CLIENT_CERT``, ``KMS_CLIENT_KEY`` and, if set, ``KMS_TLS_SERVER_NAME`` (as
        written by ``kms-server dev`` into ``DATA_DIR/env``). ``kwargs`` go to the
        constructor."""

        def var(name: str) -> str:
            value = os.environ.get(name)
            if not value:
                raise KmsConfigError(
                    f"{name} is not set: `. DATA_DIR/env` after `kms-server dev`, or pass it"
                )
            return value

        return cls(
            var(ENV_ADDR),
            var(ENV_CA_CERT),
            var(ENV_CLIENT_CERT),
            var(ENV_CLIENT_KEY),
            os.environ.get(ENV_SERVER_NAME) or None,
            **kwargs,
        )

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            details = e.details() if isinstance(e, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            raise KmsError(name, details or str(e)) from None

    def encrypt(self, key: str, plaintext: bytes, context: Context = None) -> EncryptResult:
        """Encrypts ``plaintext`` (at most 64 KiB by default) under the latest version of the
        key named ``key``. ``context`` (string pairs) is authenticated with the data and must
        be given again to decrypt.

        Raises ``KmsError``: ``NOT_FOUND`` (no such key), ``FAILED_PRECONDITION`` (key
        disabled, pending deletion, destroyed), ``PERMISSION_DENIED``, ``INVALID_ARGUMENT``."""
        resp = self._call(
            self._crypto.Encrypt,
            self._pb2.EncryptRequest(
                key=key, plaintext=_bytes(plaintext, "plaintext"), context=_context(context)
            ),
        )
        return EncryptResult(ciphertext=resp.ciphertext, key=resp.key, version=resp.version)

    def decrypt(self, ciphertext: bytes, context: Context = None) -> DecryptResult:
        """Decrypts a ciphertext from ``encrypt`` (or ``kms-cli encrypt``, base64-decoded);
        the ciphertext names its key and version. ``context`` must be the one it was
        encrypted with (order does not matter).

        Raises ``KmsError``: ``INVALID_ARGUMENT`` "ciphertext authentication failed" for a
        damaged ciphertext or a wrong context, ``FAILED_PRECONDITION`` for a revoked or
        destroyed version, ``PERMISSION_DENIED``."""
        resp = self._call(
            self._crypto.Decrypt,
            self._pb2.DecryptRequest(
                ciphertext=_bytes(ciphertext, "ciphertext"), context=_context(context)
            ),
        )
        return DecryptResult(plaintext=resp.plaintext, key=resp.key, version=resp.version)

    def generate_data_key(self, key: str, context: Context = None) -> DataKey:
        """A fresh 256-bit data key, in clear and encrypted under ``key`` (envelope
        encryption: encrypt large data locally with ``plaintext``, keep ``ciphertext`` beside
        it, and ``decrypt`` it when needed)."""
        resp = self._call(
            self._crypto.GenerateDataKey,
            self._pb2.GenerateDataKeyRequest(key=key, context=_context(context)),
        )
        return DataKey(
            plaintext=resp.plaintext,
            ciphertext=resp.ciphertext,
            key=resp.key,
            version=resp.version,
        )

    def reencrypt(
        self,
        ciphertext: bytes,
        context: Context = None,
        destination_key: Optional[str] = None,
    ) -> ReEncryptResult:
        """Re-encrypts a ciphertext under the latest version of ``destination_key`` (default:
        its own key, e.g. after a rotation), with the same ``context``; the plaintext never
        leaves the server."""
        resp = self._call(
            self._crypto.ReEncrypt,
            self._pb2.ReEncryptRequest(
                ciphertext=_bytes(ciphertext, "ciphertext"),
                context=_context(context),
                destination_key=destination_key or "",
            ),
        )
        return ReEncryptResult(
            ciphertext=resp.ciphertext,
            source_key=resp.source_key,
            source_version=resp.source_version,
            key=resp.key,
            version=resp.version,
        )

    def close(self) -> None:
        """Closes the connection; calls after this fail."""
        self._channel.close()

    def __enter__(self) -> "KmsClient":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KmsClient({self._addr!r})"
