"""Python client for the KMS: Encrypt, Decrypt, GenerateDataKey and ReEncrypt over mutual TLS.

The public interface is: ``KmsClient``, its results (``EncryptResult``, ``DecryptResult``,
``DataKey``, ``ReEncryptResult``) and its errors (``KmsError`` for every refusal, with the
gRPC status code's name and the server's message; ``KmsConnectError`` when no KMS answered;
``KmsConfigError`` for a wrong local setting). The gRPC stubs are generated from the
repository's ``proto/`` on first use (``generate.py`` does it ahead of time).

Example::

    from kms_client import KmsClient, KmsError

    with KmsClient("https://127.0.0.1:8200", "ca.pem", "app.pem", "app-key.pem",
                   server_name="localhost") as kms:
        sealed = kms.encrypt("app/db", b"s3cret", context={"tenant": "acme"})
        assert kms.decrypt(sealed.ciphertext, {"tenant": "acme"}).plaintext == b"s3cret"
        try:
            kms.encrypt("app/no-such-key", b"x")
        except KmsError as e:
            print(e.code, e.message)   # NOT_FOUND key app/no-such-key does not exist ...
"""

from ._stubs import StubsError
from .client import (
    DataKey,
    DecryptResult,
    EncryptResult,
    KmsClient,
    KmsConfigError,
    KmsConnectError,
    KmsError,
    ReEncryptResult,
)

__all__ = [
    "DataKey",
    "DecryptResult",
    "EncryptResult",
    "KmsClient",
    "KmsConfigError",
    "KmsConnectError",
    "KmsError",
    "ReEncryptResult",
    "StubsError",
]
