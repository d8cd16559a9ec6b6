"""The local stand-ins speak enough Key Vault and ARM for the REAL Azure SDK clients (no SDK mocks)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import stat
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo, SupportsTokenInfo, TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import KeyClient, KeyType
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm
from azure.mgmt.datafactory import DataFactoryManagementClient
from azure.mgmt.datafactory.models import RunFilterParameters, RunQueryFilter
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devtools.datafactory_standin import DataFactoryStandIn
from devtools.keyvault_standin import KeyVaultStandIn, b64url_decode, b64url_encode
from devtools.tls import StaticTokenCredential, generate_self_signed_cert
from shared.keyvault_admin import private_jwk

# Small retry settings so that retried faults cost milliseconds, not the SDK's default backoff.
FAST_RETRY: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}
SUB, RG, FACTORY, PIPELINE = "11111111-2222-3333-4444-555555555555", "rg-relay", "adf-relay", "ExportO365DataEvents"
TENANT_A = "8f2a6a0e-1c1e-4a53-9a8e-2f6f3a0b7c11"


def _oaep(hash_alg: hashes.HashAlgorithm) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hash_alg), algorithm=hash_alg, label=None)


PADDINGS: dict[EncryptionAlgorithm, padding.AsymmetricPadding] = {
    EncryptionAlgorithm.rsa_oaep: _oaep(hashes.SHA1()),
    EncryptionAlgorithm.rsa_oaep_256: _oaep(hashes.SHA256()),
    EncryptionAlgorithm.rsa1_5: padding.PKCS1v15(),
}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA-2048 key reused across tests (generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def adf() -> Iterator[DataFactoryStandIn]:
    with DataFactoryStandIn() as standin:
        yield standin
    assert standin.server_errors == []


def _key_client(kv: KeyVaultStandIn, **kwargs: Any) -> KeyClient:
    return KeyClient(kv.url, kv.credential, **kv.client_kwargs(), **{**FAST_RETRY, **kwargs})


def _crypto_client(kv: KeyVaultStandIn, key_id: str, **kwargs: Any) -> CryptographyClient:
    return CryptographyClient(key_id, kv.credential, **kv.client_kwargs(), **{**FAST_RETRY, **kwargs})


def _adf_client(adf: DataFactoryStandIn, **kwargs: Any) -> DataFactoryManagementClient:
    return DataFactoryManagementClient(adf.credential, SUB, **adf.client_kwargs(), **{**FAST_RETRY, **kwargs})


def _raw(
    url: str, cert_path: str, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any, Any]:
    """A plain HTTPS request with Python's default (verifying) TLS context: (status, headers, JSON)."""
    context = ssl.create_default_context(cafile=cert_path)
    data = None if body is None else json.dumps(body).encode()
    all_headers = {**(headers or {}), **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, json.loads(exc.read() or b"null")


def _error_code(exc: HttpResponseError) -> str | None:
    assert exc.error is not None
    return exc.error.code


# --------------------------------------------------------------------------------------------------
# TLS material and credential
# --------------------------------------------------------------------------------------------------
def test_self_signed_cert_names_loopback_and_key_is_private(tmp_path: Path) -> None:
    cert_path, key_path = generate_self_signed_cert(tmp_path)
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert stat.S_IMODE(Path(key_path).stat().st_mode) == 0o600
    assert Path(cert_path).parent == Path(key_path).parent == tmp_path


def test_static_token_credential_satisfies_both_azure_core_protocols() -> None:
    cred = StaticTokenCredential("tok")
    assert isinstance(cred, TokenCredential)
    assert isinstance(cred, SupportsTokenInfo)
    token = cred.get_token("https://vault.azure.net/.default", tenant_id="t1")
    info = cred.get_token_info("https://management.azure.com/.default", options={"enable_cae": True})
    assert isinstance(token, AccessToken) and isinstance(info, AccessTokenInfo)
    assert token.token == info.token == "tok"
    assert 3500 < token.expires_on - time.time() <= 3600
    assert cred.scopes_requested == ["https://vault.azure.net/.default", "https://management.azure.com/.default"]
    assert cred.token_requests[0].tenant_id == "t1" and cred.token_requests[1].enable_cae


# --------------------------------------------------------------------------------------------------
# Key Vault: KeyClient
# --------------------------------------------------------------------------------------------------
def test_kv_answers_challenge_without_token_and_shuts_down(tmp_path: Path) -> None:
    with KeyVaultStandIn() as kv:
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", kv.url)
        status, headers, body = _raw(f"{kv.url}/keys/x/?api-version=7.6", kv.cert_path)
        assert status == 401
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer authorization="https://login.microsoftonline.com/')
        assert 'resource="https://vault.azure.net"' in challenge
        assert body["error"]["code"] == "Unauthorized"
        assert kv.challenges == 1 and kv.requests == []  # the handshake is not a recorded request
        port = int(kv.url.rsplit(":", 1)[1])
        cert_path = Path(kv.cert_path)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert not cert_path.exists()


def test_kv_refuses_a_token_it_did_not_issue(kv: KeyVaultStandIn) -> None:
    status, _, body = _raw(f"{kv.url}/keys?api-version=7.6", kv.cert_path, headers={"Authorization": "Bearer forged"})
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
    assert kv.rejected_tokens == 1 and kv.requests == []
    wrong = KeyClient(kv.url, StaticTokenCredential("other"), **kv.client_kwargs(), **FAST_RETRY)
    with pytest.raises(HttpResponseError) as refused, wrong:
        wrong.create_rsa_key(TENANT_A, size=2048)
    assert refused.value.status_code == 401 and kv.key_names() == []
    with _key_client(kv) as client:  # the stand-in's own token works
        assert client.create_rsa_key(TENANT_A, size=2048).name == TENANT_A


def test_adf_refuses_a_token_it_did_not_issue(adf: DataFactoryStandIn) -> None:
    wrong = DataFactoryManagementClient(StaticTokenCredential("other"), SUB, **adf.client_kwargs(), **FAST_RETRY)
    with pytest.raises(HttpResponseError) as refused:
        wrong.pipelines.create_run(RG, FACTORY, "p", parameters={})
    assert refused.value.status_code == 401 and adf.rejected_tokens >= 1 and adf.runs == {}


def test_every_uninjected_5xx_is_kept_for_the_suite_to_see(
    kv: KeyVaultStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = {"Authorization": f"Bearer {kv.credential.token}"}
    kv.fail_next(1, 503)
    assert _raw(f"{kv.url}/keys?api-version=7.6", kv.cert_path, headers=auth)[0] == 503
    assert kv.uninjected_5xx == []  # injected: not the stand-in's own doing

    def stand_in_bug(request: Any) -> Any:
        raise KeyError("a bug in the stand-in")

    monkeypatch.setattr(kv, "_route", stand_in_bug)
    status = _raw(f"{kv.url}/keys/broken?api-version=7.6", kv.cert_path, headers=auth)[0]
    assert status == 500 and len(kv.uninjected_5xx) == 1 and "/keys/broken" in kv.uninjected_5xx[0]
    kv.uninjected_5xx.clear()  # seen and asserted here; the suite-wide check would fail the test otherwise
    kv.server_errors.clear()


def test_create_rsa_key_with_expiry(kv: KeyVaultStandIn) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)
    with _key_client(kv) as client:
        key = client.create_rsa_key(TENANT_A, size=2048, expires_on=expires)

    assert key.name == TENANT_A and key.key_type == KeyType.rsa
    assert key.properties.expires_on == expires and key.properties.enabled
    assert re.fullmatch(r"[0-9a-f]{32}", key.properties.version or "")
    assert key.id == f"{kv.url}/keys/{TENANT_A}/{key.properties.version}"
    # The public key the SDK got is the stored private key's, n without a leading zero byte.
    stored = kv.private_key(TENANT_A)
    assert stored.key_size == 2048
    modulus: bytes = vars(key.key)["n"]  # JsonWebKey sets its fields dynamically
    assert modulus[0] != 0 and len(modulus) == 256
    assert int.from_bytes(modulus, "big") == stored.public_key().public_numbers().n

    [create] = kv.requests
    assert (create.method, create.path, create.query) == (
        "POST",
        f"/keys/{TENANT_A}/create",
        {"api-version": "2025-07-01"},
    )
    assert create.body["kty"] == "RSA" and create.body["key_size"] == 2048
    assert create.body["attributes"]["exp"] == int(expires.timestamp())
    assert kv.credential.scopes_requested == ["https://vault.azure.net/.default"]


def test_import_key_from_cryptography_private_key(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    with _key_client(kv) as client:
        imported = client.import_key(TENANT_A, private_jwk(rsa_key), expires_on=expires)
        fetched = client.get_key(TENANT_A)

    assert imported.id == fetched.id
    assert fetched.properties.expires_on == expires
    assert kv.private_key(TENANT_A).private_numbers() == rsa_key.private_numbers()
    put = kv.requests_matching(method="PUT")[0]
    assert put.path == f"/keys/{TENANT_A}"
    d = rsa_key.private_numbers().d
    assert b64url_decode(put.body["key"]["d"]) == d.to_bytes((d.bit_length() + 7) // 8, "big")
    assert "=" not in put.body["key"]["n"]  # the SDK sends Base64url without padding too
    assert put.body["attributes"]["exp"] == int(expires.timestamp())


def test_get_and_list_keys_and_versions_across_pages(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    names = [f"tenant-{i}" for i in range(5)]
    for name in names:
        kv.add_key(name, rsa_key, exp=2_000_000_000)
    first = kv.versions("tenant-0")[0]
    kv.add_key("tenant-0", rsa_key, exp=2_000_000_000)
    kv.add_key("tenant-0", rsa_key, exp=None)

    with _key_client(kv) as client:
        listed = [p.name for p in client.list_properties_of_keys()]
        versions = [p.version for p in client.list_properties_of_key_versions("tenant-0")]
        latest = client.get_key("tenant-0")
        old = client.get_key("tenant-0", version=first)

    assert sorted(listed) == names
    assert versions == kv.versions("tenant-0") and len(versions) == 3
    assert latest.properties.version == versions[-1] and latest.properties.expires_on is None
    assert old.properties.version == first and old.properties.expires_on is not None
    list_pages = kv.requests_matching("/keys", "GET")
    key_pages = [r for r in list_pages if r.path == "/keys"]
    version_pages = [r for r in list_pages if r.path == "/keys/tenant-0/versions"]
    assert len(key_pages) == 3 and len(version_pages) == 2  # page size 2: paging really happened
    assert key_pages[1].query == {"api-version": "2025-07-01", "$skiptoken": "2", "maxresults": "2"}
    assert kv.requests_matching(f"/keys/tenant-0/{first}", "GET")


def test_update_key_properties_and_disabled_key_refuses_decrypt(
    kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey
) -> None:
    version = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    new_exp = datetime(2031, 1, 1, tzinfo=UTC)
    ciphertext = rsa_key.public_key().encrypt(b"k" * 32, PADDINGS[EncryptionAlgorithm.rsa_oaep_256])
    with _key_client(kv) as client, _crypto_client(kv, kv.key_id(TENANT_A, version)) as crypto:
        updated = client.update_key_properties(TENANT_A, version, enabled=False, expires_on=new_exp)
        assert updated.properties.enabled is False and updated.properties.expires_on == new_exp
        assert client.get_key(TENANT_A).properties.enabled is False  # GET still works when disabled
        with pytest.raises(HttpResponseError) as info:
            crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext)
        assert info.value.status_code == 403 and _error_code(info.value) == "Forbidden"
        client.update_key_properties(TENANT_A, enabled=True)  # no version: the latest
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext).plaintext == b"k" * 32

    patch = kv.requests_matching(method="PATCH")[0]
    assert patch.path == f"/keys/{TENANT_A}/{version}"
    assert patch.body["attributes"] == {"enabled": False, "exp": int(new_exp.timestamp())}
    assert kv.requests_matching(method="PATCH")[1].path == f"/keys/{TENANT_A}/"


def test_begin_delete_key_polls_deleted_key_and_blocks_name_reuse(
    kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey
) -> None:
    kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    with _key_client(kv) as client:
        poller = client.begin_delete_key(TENANT_A)
        poller.wait()
        deleted = poller.result()
        assert deleted.recovery_id == f"{kv.url}/deletedkeys/{TENANT_A}"
        assert deleted.deleted_date is not None and deleted.scheduled_purge_date is not None
        with pytest.raises(ResourceNotFoundError) as info:
            client.get_key(TENANT_A)
        assert _error_code(info.value) == "KeyNotFound"
        with pytest.raises(ResourceExistsError):
            client.import_key(TENANT_A, private_jwk(rsa_key))
        client.purge_deleted_key(TENANT_A)

    assert [(r.method, r.path) for r in kv.requests[:2]] == [
        ("DELETE", f"/keys/{TENANT_A}"),
        ("GET", f"/deletedkeys/{TENANT_A}"),
    ]
    assert kv.key_names() == [] and kv.deleted_key_names() == []


# --------------------------------------------------------------------------------------------------
# Key Vault: CryptographyClient
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", list(PADDINGS), ids=lambda a: str(a.value))
def test_cryptography_client_decrypts_remotely(
    kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey, algorithm: EncryptionAlgorithm
) -> None:
    version = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    secret = uuid.uuid4().bytes * 2  # a 32-byte "file key"
    ciphertext = rsa_key.public_key().encrypt(secret, PADDINGS[algorithm])

    with _crypto_client(kv, kv.key_id(TENANT_A, version)) as crypto:
        result = crypto.decrypt(algorithm, ciphertext)

    assert result.plaintext == secret and result.algorithm == algorithm
    # The client first GETs the key (public part only), then asks the vault to decrypt.
    get, decrypt = kv.requests
    assert (get.method, get.path) == ("GET", f"/keys/{TENANT_A}/{version}")
    assert (decrypt.method, decrypt.path) == ("POST", f"/keys/{TENANT_A}/{version}/decrypt")
    assert decrypt.body == {"alg": algorithm.value, "value": b64url_encode(ciphertext)}


def test_wrong_padding_is_a_400_bad_parameter(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    version = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    ciphertext = rsa_key.public_key().encrypt(b"x" * 32, PADDINGS[EncryptionAlgorithm.rsa_oaep_256])
    with _crypto_client(kv, kv.key_id(TENANT_A, version)) as crypto:
        for wrong in (EncryptionAlgorithm.rsa_oaep, EncryptionAlgorithm.rsa1_5):
            with pytest.raises(HttpResponseError) as info:
                crypto.decrypt(wrong, ciphertext)
            assert info.value.status_code == 400 and _error_code(info.value) == "BadParameter"
    assert len(kv.requests_matching("/decrypt")) == 2  # a 400 is not retried


def test_versionless_key_id_and_remote_encrypt_when_get_fails(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    version = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    kv.fail_next(1, 403, f"/keys/{TENANT_A}", method="GET")  # no keys/get permission
    with _crypto_client(kv, kv.key_id(TENANT_A)) as crypto:
        encrypted = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"relay")
        decrypted = crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, encrypted.ciphertext)

    assert decrypted.plaintext == b"relay"
    assert rsa_key.decrypt(encrypted.ciphertext, PADDINGS[EncryptionAlgorithm.rsa_oaep_256]) == b"relay"
    # After a 403 on GET the client never GETs again; with no version it posts to /keys/{name}//op.
    assert [(r.method, r.path) for r in kv.requests] == [
        ("GET", f"/keys/{TENANT_A}/"),
        ("POST", f"/keys/{TENANT_A}//encrypt"),
        ("POST", f"/keys/{TENANT_A}//decrypt"),
    ]
    assert encrypted.key_id == kv.key_id(TENANT_A) and version in kv.versions(TENANT_A)


def test_transient_503_is_retried_by_azure_core(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    version = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    ciphertext = rsa_key.public_key().encrypt(b"s" * 32, PADDINGS[EncryptionAlgorithm.rsa_oaep])
    kv.fail_next(2, 503, path_contains="/decrypt")
    with _crypto_client(kv, kv.key_id(TENANT_A, version)) as crypto:
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == b"s" * 32
    assert len(kv.requests_matching("/decrypt", "POST")) == 3


def test_outage_longer_than_retry_budget_raises(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    version = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    ciphertext = rsa_key.public_key().encrypt(b"s" * 32, PADDINGS[EncryptionAlgorithm.rsa_oaep])
    with _crypto_client(kv, kv.key_id(TENANT_A, version), retry_total=2) as crypto:
        crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext)  # initialised: key fetched once
        kv.set_available(False)
        started = time.monotonic()
        with pytest.raises(HttpResponseError) as info:
            crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext)
        assert info.value.status_code == 503 and time.monotonic() - started < 1.5
        assert len(kv.requests_matching("/decrypt")) == 1 + 3  # one success, then 1 try + 2 retries
        kv.set_available(True)
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == b"s" * 32


def test_versionless_decrypt_route_uses_latest_version(kv: KeyVaultStandIn, rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kv.add_key(TENANT_A, other, exp=2_000_000_000)
    latest = kv.add_key(TENANT_A, rsa_key, exp=2_000_000_000)
    ciphertext = rsa_key.public_key().encrypt(b"v" * 32, PADDINGS[EncryptionAlgorithm.rsa_oaep_256])
    status, _, body = _raw(
        f"{kv.url}/keys/{TENANT_A.upper()}/decrypt?api-version=7.4",  # names are case-insensitive
        kv.cert_path,
        method="POST",
        headers={"Authorization": f"Bearer {kv.credential.token}"},
        body={"alg": "RSA-OAEP-256", "value": b64url_encode(ciphertext)},
    )
    assert status == 200 and b64url_decode(body["value"]) == b"v" * 32
    assert body["kid"] == kv.key_id(TENANT_A, latest)


def test_unknown_key_is_404_key_not_found(kv: KeyVaultStandIn) -> None:
    with (
        _crypto_client(kv, kv.key_id("no-such-tenant", "0" * 32)) as crypto,
        pytest.raises(ResourceNotFoundError) as info,
    ):
        crypto.decrypt(EncryptionAlgorithm.rsa_oaep, b"\1" * 256)
    assert _error_code(info.value) == "KeyNotFound"


# --------------------------------------------------------------------------------------------------
# Data Factory
# --------------------------------------------------------------------------------------------------
def test_create_run_records_exact_path_and_parameters(adf: DataFactoryStandIn) -> None:
    params = {"TenantId": TENANT_A, "RequestStartDate": "", "RequestEndDate": "", "AggregationType": "Week"}
    with _adf_client(adf) as client:
        run = client.pipelines.create_run(RG, FACTORY, PIPELINE, parameters=params)

    assert run.run_id is not None and uuid.UUID(run.run_id)
    [create] = adf.requests
    assert create.method == "POST"
    assert create.path == (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DataFactory"
        f"/factories/{FACTORY}/pipelines/{PIPELINE}/createRun"
    )
    assert create.query == {"api-version": "2018-06-01"} and create.body == params
    recorded = adf.runs[run.run_id]
    assert (recorded.factory, recorded.pipeline_name, recorded.parameters) == (FACTORY, PIPELINE, params)
    assert adf.credential.scopes_requested == ["https://management.azure.com/.default"]


def test_pipeline_run_get_returns_scripted_statuses_in_order(adf: DataFactoryStandIn) -> None:
    adf.script_statuses(None, ["Queued", "InProgress", ("Failed", "Operation on target Copy failed")])
    with _adf_client(adf) as client:
        run_id = client.pipelines.create_run(RG, FACTORY, PIPELINE, parameters={"TenantId": TENANT_A}).run_id
        assert run_id is not None
        seen = [client.pipeline_runs.get(RG, FACTORY, run_id) for _ in range(4)]
        other = client.pipelines.create_run(RG, FACTORY, PIPELINE).run_id  # no parameters: no body
        assert other is not None
        adf.set_run_status(other, "Succeeded")
        done = client.pipeline_runs.get(RG, FACTORY, other)
        with pytest.raises(ResourceNotFoundError) as info:
            client.pipeline_runs.get(RG, FACTORY, str(uuid.uuid4()))

    assert [r.status for r in seen] == ["Queued", "InProgress", "Failed", "Failed"]
    assert seen[0].run_end is None and seen[2].run_end is not None and seen[2].duration_in_ms is not None
    assert seen[2].message == "Operation on target Copy failed"
    assert seen[0].parameters == {"TenantId": TENANT_A} and seen[0].pipeline_name == PIPELINE
    assert seen[0].invoked_by is not None and seen[0].invoked_by.invoked_by_type == "Manual"
    assert done.status == "Succeeded" and adf.runs[other].parameters == {}
    assert _error_code(info.value) == "ResourceNotFound"


def test_cancel_moves_run_to_cancelled(adf: DataFactoryStandIn) -> None:
    with _adf_client(adf) as client:
        run_id = client.pipelines.create_run(RG, FACTORY, PIPELINE).run_id
        assert run_id is not None
        client.pipeline_runs.cancel(RG, FACTORY, run_id)
        statuses = [client.pipeline_runs.get(RG, FACTORY, run_id).status for _ in range(3)]
    assert statuses == ["Canceling", "Cancelled", "Cancelled"] and adf.runs[run_id].cancel_requested


def test_throttled_create_run_with_retry_after_zero_is_retried(adf: DataFactoryStandIn) -> None:
    adf.fail_next(1, 429, path_contains="/createRun")
    started = time.monotonic()
    with _adf_client(adf) as client:
        run = client.pipelines.create_run(RG, FACTORY, PIPELINE, parameters={"TenantId": TENANT_A})
    assert time.monotonic() - started < 1.5
    assert len(adf.requests_matching("/createRun")) == 2  # the 429, then the retry that succeeded
    assert list(adf.runs) == [run.run_id]


def test_createrun_failure_for_one_tenant_only(adf: DataFactoryStandIn) -> None:
    bad = "00000000-dead-beef-0000-000000000000"
    adf.fail_pipeline_params({"TenantId": bad}, code="BadRequest", message="Office365 consent missing")
    with _adf_client(adf) as client:
        with pytest.raises(HttpResponseError) as info:
            client.pipelines.create_run(RG, FACTORY, PIPELINE, parameters={"TenantId": bad})
        good = client.pipelines.create_run(RG, FACTORY, PIPELINE, parameters={"TenantId": TENANT_A})
    assert info.value.status_code == 400 and _error_code(info.value) == "BadRequest"
    assert len(adf.requests_matching("/createRun")) == 2  # the 400 was not retried
    assert [r.parameters["TenantId"] for r in adf.runs.values()] == [TENANT_A] and good.run_id in adf.runs


def test_arm_requires_bearer_token_and_api_version(adf: DataFactoryStandIn) -> None:
    base = f"{adf.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DataFactory"
    base += f"/factories/{FACTORY}"
    status, headers, body = _raw(f"{base}/pipelineruns/x?api-version=2018-06-01", adf.cert_path)
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    status, _, body = _raw(
        f"{base}/pipelineruns/x?api-version=2017-01-01",
        adf.cert_path,
        headers={"Authorization": f"Bearer {adf.credential.token}"},
    )
    assert status == 400 and body["error"]["code"] == "InvalidApiVersionParameter"
    assert adf.challenges == 1 and len(adf.requests) == 1


def test_query_pipeline_runs_filters_by_pipeline_name(adf: DataFactoryStandIn) -> None:
    with _adf_client(adf) as client:
        wanted = client.pipelines.create_run(RG, FACTORY, PIPELINE).run_id
        client.pipelines.create_run(RG, FACTORY, "OtherPipeline")
        result = client.pipeline_runs.query_by_factory(
            RG,
            FACTORY,
            RunFilterParameters(
                last_updated_after=datetime.now(UTC) - timedelta(hours=1),
                last_updated_before=datetime.now(UTC) + timedelta(hours=1),
                filters=[RunQueryFilter(operand="PipelineName", operator="Equals", values_property=[PIPELINE])],
            ),
        )
    assert [run.run_id for run in result.value] == [wanted]
    assert adf.requests[-1].body["filters"][0]["values"] == [PIPELINE]
