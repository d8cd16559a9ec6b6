"""Key unwrapping: each tolerated variant, each refusal, through the folder and Key Vault backends."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.keyvault_standin import KeyVaultStandIn
from shared.errors import KeyNotFound, KeyUnwrapError, TransientError
from shared.keyfolder import KeyFolder, KeyFolderUnwrapper, key_version, padding_for
from shared.keys import decode_file_key, decode_iv
from shared.keyvault import KeyVaultUnwrapper

KEY = bytes(range(32))
IV = bytes(range(16))


@pytest.mark.parametrize(
    "plaintext",
    [KEY, base64.b64encode(KEY), KEY.hex().encode(), KEY.hex().upper().encode(), base64.b64encode(KEY) + b"\n"],
)
def test_file_key_encodings_accepted(plaintext: bytes) -> None:
    assert decode_file_key(plaintext) == KEY


@pytest.mark.parametrize("plaintext", [KEY[:31], KEY + b"x", base64.b64encode(KEY[:16]), b"z" * 64, b"", b"x" * 88])
def test_other_key_encodings_rejected(plaintext: bytes) -> None:
    with pytest.raises(KeyUnwrapError, match="neither a raw 32-byte AES-256 key"):
        decode_file_key(plaintext)


@pytest.mark.parametrize("iv", [IV, base64.b64encode(IV), IV.hex().encode()])
def test_iv_encodings_accepted(iv: bytes) -> None:
    assert decode_iv(iv) == IV


def test_bad_iv_rejected() -> None:
    with pytest.raises(KeyUnwrapError, match="IV"):
        decode_iv(b"short")


@pytest.fixture
def folder(tmp_path: Path) -> tuple[KeyFolder, str]:
    kf = KeyFolder(tmp_path / "keys")
    tenant = str(uuid.uuid4())
    kf.create(tenant)
    return kf, tenant


@pytest.mark.parametrize("alg", ["RSA-OAEP-256", "RSA-OAEP"])
@pytest.mark.parametrize("text", ["raw", "base64", "hex"])
def test_folder_unwrap_each_padding_and_encoding(folder: tuple[KeyFolder, str], alg: str, text: str) -> None:
    kf, tenant = folder
    pub = kf.public_key(tenant)
    plain = {"raw": KEY, "base64": base64.b64encode(KEY), "hex": KEY.hex().encode()}[text]
    wrapped = pub.encrypt(plain, padding_for(alg))
    fk = KeyFolderUnwrapper(kf.path).unwrap(tenant, key_version(pub), wrapped, IV)
    assert fk.key == KEY and fk.iv == IV and fk.algorithm == alg
    assert KEY.hex() not in repr(fk)  # key material never in a repr/log


def test_folder_rsa1_5_only_when_enabled(folder: tuple[KeyFolder, str]) -> None:
    kf, tenant = folder
    wrapped = kf.public_key(tenant).encrypt(KEY, padding_for("RSA1_5"))
    with pytest.raises(KeyUnwrapError):
        KeyFolderUnwrapper(kf.path).unwrap(tenant, "", wrapped, IV)
    fk = KeyFolderUnwrapper(kf.path, ("RSA-OAEP-256", "RSA-OAEP", "RSA1_5")).unwrap(tenant, "", wrapped, IV)
    assert fk.algorithm == "RSA1_5" and fk.key == KEY


def test_folder_rotated_version_still_unwraps_old_drops(folder: tuple[KeyFolder, str]) -> None:
    kf, tenant = folder
    old_pub = kf.public_key(tenant)
    wrapped = old_pub.encrypt(KEY, padding_for("RSA-OAEP-256"))
    new_version, _ = kf.create(tenant, rotate=True)
    assert (kf.path / f"{tenant}.{key_version(old_pub)}.pem").exists()
    fk = KeyFolderUnwrapper(kf.path).unwrap(tenant, key_version(old_pub), wrapped, IV)
    assert fk.key == KEY and fk.key_version == key_version(old_pub) != new_version


def test_folder_never_uses_another_tenants_key(folder: tuple[KeyFolder, str]) -> None:
    kf, tenant = folder
    other = str(uuid.uuid4())
    kf.create(other)
    wrapped = kf.public_key(other).encrypt(KEY, padding_for("RSA-OAEP-256"))
    with pytest.raises(KeyUnwrapError, match="could not be unwrapped"):
        KeyFolderUnwrapper(kf.path).unwrap(tenant, "", wrapped, IV)


def test_folder_missing_key(tmp_path: Path) -> None:
    with pytest.raises(KeyNotFound):
        KeyFolderUnwrapper(tmp_path).unwrap(str(uuid.uuid4()), "", os.urandom(256), IV)


def test_second_key_refused_without_rotate(folder: tuple[KeyFolder, str]) -> None:
    kf, tenant = folder
    with pytest.raises(Exception, match="already has a key"):
        kf.create(tenant)


@pytest.fixture(scope="module")
def vault() -> Iterator[KeyVaultStandIn]:
    with KeyVaultStandIn() as standin:
        yield standin


def _vault_unwrapper(vault: KeyVaultStandIn, *algs: str) -> KeyVaultUnwrapper:
    return KeyVaultUnwrapper(
        vault.url,
        vault.credential,
        algs or ("RSA-OAEP-256", "RSA-OAEP"),
        retry_total=0,
        **vault.client_kwargs(),
    )


@pytest.mark.parametrize("alg", ["RSA-OAEP-256", "RSA-OAEP"])
@pytest.mark.parametrize("text", ["raw", "base64"])
def test_key_vault_unwrap_with_the_real_client(vault: KeyVaultStandIn, alg: str, text: str) -> None:
    tenant = str(uuid.uuid4())
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    version = vault.add_key(tenant, private, exp=2_000_000_000)
    plain = KEY if text == "raw" else base64.b64encode(KEY)
    wrapped = private.public_key().encrypt(plain, padding_for(alg))
    fk = _vault_unwrapper(vault).unwrap(tenant, version, wrapped, IV)
    assert fk.key == KEY and fk.algorithm == alg and fk.key_version == version
    decrypts = [r for r in vault.requests if r.method == "POST" and r.path.endswith("/decrypt") and tenant in r.path]
    assert decrypts and decrypts[-1].path == f"/keys/{tenant}/{version}/decrypt"
    assert decrypts[-1].body is not None and decrypts[-1].body["alg"] == alg


def test_key_vault_missing_key(vault: KeyVaultStandIn) -> None:
    with pytest.raises(KeyNotFound, match="has no key"):
        _vault_unwrapper(vault).unwrap(str(uuid.uuid4()), "", os.urandom(256), IV)


def test_key_vault_wrong_key(vault: KeyVaultStandIn) -> None:
    tenant = str(uuid.uuid4())
    vault.add_key(tenant, rsa.generate_private_key(public_exponent=65537, key_size=2048), exp=2_000_000_000)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    wrapped = stranger.encrypt(KEY, padding_for("RSA-OAEP-256"))
    with pytest.raises(KeyUnwrapError, match="could not be unwrapped"):
        _vault_unwrapper(vault).unwrap(tenant, "", wrapped, IV)


def test_key_vault_outage_is_transient(vault: KeyVaultStandIn) -> None:
    tenant = str(uuid.uuid4())
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    version = vault.add_key(tenant, private, exp=2_000_000_000)
    wrapped = private.public_key().encrypt(KEY, padding_for("RSA-OAEP-256"))
    vault.set_available(False)
    try:
        with pytest.raises(TransientError):
            _vault_unwrapper(vault).unwrap(tenant, version, wrapped, IV)
    finally:
        vault.set_available(True)
