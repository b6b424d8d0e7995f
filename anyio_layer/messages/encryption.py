"""Symmetric message encryption, compatible with channels_redis' ``symmetric_encryption_keys``.

Contract
--------

* Each configured key (``str``, encoded as UTF-8, or ``bytes``) is turned
  into a Fernet key exactly as channels_redis does it:
  ``base64.urlsafe_b64encode(hashlib.sha256(key).digest())``. Layers sharing
  a key therefore read each other's messages, whichever library wrote them.
* :func:`make_crypter` builds a ``cryptography.fernet.MultiFernet``: the
  *first* key encrypts, every key is tried when decrypting, so keys can be
  rotated by prepending the new one and dropping the old one later.
* :func:`decrypt` enforces a TTL (channels_redis uses ``expiry + 10``
  seconds) and turns every failure into
  :class:`~anyio_layer.exceptions.MessageDecodeError`, saying whether the
  token was too old or could not be authenticated (wrong key, tampered or
  not encrypted at all).
* Configuration mistakes raise
  :class:`~anyio_layer.exceptions.ConfigurationError`: a bare string or
  bytes instead of a list of keys, an unordered collection (the order decides
  which key encrypts), an empty list, an empty or non-string key, and a
  missing ``cryptography`` package.

``cryptography`` is an optional dependency and is imported only when
encryption is actually configured.

This module only turns keys into Fernet objects and decrypts: it must not
know the message layout (the random prefix, the formats), which is
:mod:`anyio_layer.messages.serializers`'. Covered by ``tests/test_serializers.py``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
from collections.abc import Iterable, Mapping, Set
from types import ModuleType
from typing import TYPE_CHECKING

from ..exceptions import ConfigurationError, MessageDecodeError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

__all__ = ["INSTALL_HINT", "decrypt", "derive_fernet_key", "make_crypter", "make_fernet"]

#: What to install to get encryption support.
INSTALL_HINT = "pip install anyio-channel-layer[cryptography]"


def _fernet_module() -> ModuleType:
    """``cryptography.fernet``, imported on first use."""
    try:
        fernet = importlib.import_module("cryptography.fernet")
    except ImportError as exc:
        raise ConfigurationError(
            "symmetric_encryption_keys is set, but encryption needs the 'cryptography' "
            f"package, which is not installed: {INSTALL_HINT}"
        ) from exc
    return fernet


def derive_fernet_key(key: str | bytes) -> bytes:
    """The Fernet key channels_redis derives from ``key``: urlsafe-base64(SHA-256(key)).

    A ``str`` key is encoded as UTF-8 first. Needs no ``cryptography``.
    """
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    else:
        raise ConfigurationError(
            f"an encryption key must be a str or bytes, not {type(key).__name__}."
        )
    if not raw:
        raise ConfigurationError(
            "an encryption key must not be empty: an empty key is public knowledge and "
            "would give no protection."
        )
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


def make_fernet(key: str | bytes) -> Fernet:
    """A ``Fernet`` for one configured key (see :func:`derive_fernet_key`)."""
    derived = derive_fernet_key(key)
    fernet_cls: type[Fernet] = _fernet_module().Fernet
    return fernet_cls(derived)


def make_crypter(keys: Iterable[str | bytes]) -> MultiFernet:
    """A ``MultiFernet`` for ``keys``: the first encrypts, all of them decrypt.

    ``keys`` must be an ordered, non-empty collection (a list or tuple) of
    non-empty ``str`` or ``bytes`` keys.
    """
    if isinstance(keys, (str, bytes, bytearray)):
        raise ConfigurationError(
            "symmetric_encryption_keys must be a list of keys, not a single "
            f"{type(keys).__name__}: write [key] instead of key."
        )
    if isinstance(keys, (Set, Mapping)) or not isinstance(keys, Iterable):
        raise ConfigurationError(
            "symmetric_encryption_keys must be a list (or tuple) of str or bytes keys, "
            f"not {type(keys).__name__}; the order matters, the first key encrypts."
        )
    key_list = list(keys)
    if not key_list:
        raise ConfigurationError(
            "symmetric_encryption_keys is an empty list; give at least one key, or "
            "None to disable encryption."
        )
    fernet = _fernet_module()
    fernets = []
    for index, key in enumerate(key_list):
        try:
            derived = derive_fernet_key(key)
        except ConfigurationError as exc:
            raise ConfigurationError(f"symmetric_encryption_keys[{index}]: {exc}") from None
        fernets.append(fernet.Fernet(derived))
    crypter: MultiFernet = fernet.MultiFernet(fernets)
    return crypter


def decrypt(crypter: MultiFernet, token: bytes, ttl: int | None) -> bytes:
    """Decrypt ``token``, rejecting tokens older than ``ttl`` seconds (no limit if None).

    Raises :class:`MessageDecodeError` if no key authenticates the token
    (wrong key, tampered or unencrypted data) or if it is too old.
    """
    # ``crypter`` raises cryptography's InvalidToken for every kind of bad
    # token; catching Exception avoids importing cryptography here.
    try:
        return crypter.decrypt(token, ttl)
    except Exception:
        pass
    # Failure path only: find out why, for a useful message.
    try:
        created = crypter.extract_timestamp(token)
    except Exception:
        raise MessageDecodeError(
            "message could not be decrypted: no configured symmetric_encryption_keys "
            "authenticates it (wrong key, tampered, or not an encrypted message)."
        ) from None
    if ttl is None:
        raise MessageDecodeError(
            "message is authenticated but its encrypted payload is malformed."
        ) from None
    raise MessageDecodeError(
        f"encrypted message rejected by its timestamp ({created}): it is older than the "
        f"ttl of {ttl} seconds, or dated in the future beyond the allowed clock skew."
    ) from None
