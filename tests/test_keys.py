"""Tenant keys and onboarding: the real Key Vault clients against the local HTTPS stand-in.

The library (``VaultKeys``, ``KeyFolder``) is exercised in-process; the CLI runs through ``main`` with
the environment a subprocess would get (tests/clirun.py; a real subprocess where stdin is a terminal),
reaching the stand-in through the standard CA-bundle variable and the test-only token hook. The
end-to-end drop is wrapped with the vault key's public key, ingested into Azurite with the file key
unwrapped by the stand-in, and decrypted again by the CLI.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.azurite import Azurite
from devtools.keyvault_standin import KeyVaultStandIn, b64url_decode
from devtools.simulate import BlobWriter, generate_rows, sample_layout_root, simulate_drop
from shared import runtime as runtime_module
from shared.config import Settings
from shared.errors import ConfigError, KeyNotFound
from shared.ingest import ingest_metadata_blob
from shared.keycheck import KeyRuleError, PassphraseNeeded
from shared.keyfolder import KeyFolder, key_version, padding_for
from shared.keyvault_admin import VaultKeys, public_key_from_vault
from shared.runtime import Runtime, default_credential
from tests.clirun import run_cli
from tests.conftest import Relay, make_relay, read_queue
from viva_relay.cli.main import main

# Retried faults should cost milliseconds, not the SDK's default backoff.
FAST_RETRY: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}
PASSPHRASE = b"correct horse battery staple"
OAEP256 = padding_for("RSA-OAEP-256")


def new_tenant() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def key_a() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_b() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture
def vault(kv: KeyVaultStandIn) -> Iterator[VaultKeys]:
    with VaultKeys(kv.url, kv.credential, **kv.client_kwargs(), **FAST_RETRY) as keys:
        yield keys


def key_client(kv: KeyVaultStandIn) -> KeyClient:
    return KeyClient(kv.url, kv.credential, **kv.client_kwargs(), **FAST_RETRY)


def pem_of(key: rsa.RSAPrivateKey, password: bytes | None = None, *, pkcs1: bool = False) -> bytes:
    """What `openssl genrsa` (PKCS#1) or `openssl genpkey` (PKCS#8) would write."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if pkcs1 else serialization.PrivateFormat.PKCS8
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


def cli(
    *args: str, kv: KeyVaultStandIn | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess sees it (tests/clirun.py); with ``kv``, trusting the stand-in (test hooks only)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("KEY_SOURCE", "KEY_VAULT_URL", "KEY_FOLDER")}
    if kv is not None:
        full_env |= {"REQUESTS_CA_BUNDLE": kv.cert_path, "VIVA_RELAY_TEST_TOKEN": kv.credential.token}
    full_env |= env or {}
    return run_cli(*args, env=full_env, cwd=cwd)


def no_private_material(text: str, *keys: rsa.RSAPrivateKey) -> bool:
    """True when ``text`` holds no PEM private key and none of the keys' private exponents."""
    if "PRIVATE KEY" in text:
        return False
    for key in keys:
        d = key.private_numbers().d
        if str(d) in text or format(d, "x") in text:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Key Vault: create, rotate, import
# --------------------------------------------------------------------------------------------------
def test_create_makes_an_rsa_2048_key_named_by_the_tenant_with_an_expiry(kv: KeyVaultStandIn, vault: VaultKeys) -> None:
    tenant = new_tenant()
    before = datetime.now(UTC).replace(microsecond=0)
    created = vault.create_key(tenant.upper(), expires_in_days=90)

    assert created.tenant == tenant and kv.key_names() == [tenant]
    assert kv.private_key(tenant).key_size == 2048
    assert before + timedelta(days=90) <= created.expires_on <= datetime.now(UTC) + timedelta(days=90)
    with key_client(kv) as client:
        stored = client.get_key(tenant)
    assert stored.properties.expires_on == created.expires_on
    assert stored.properties.version == created.version and created.where == stored.id
    [create] = kv.requests_matching("/create", "POST")
    assert create.body["kty"] == "RSA" and create.body["key_size"] == 2048
    assert create.body["attributes"]["exp"] == int(created.expires_on.timestamp())
    assert set(create.body["key_ops"]) == {"encrypt", "decrypt", "wrapKey", "unwrapKey"}
    # Generated inside the vault: no private key field ever travelled.
    assert not any("d" in (r.body or {}).get("key", {}) for r in kv.requests)


def test_second_key_refused_unless_rotate_which_keeps_the_old_version(kv: KeyVaultStandIn, vault: VaultKeys) -> None:
    tenant = new_tenant()
    first = vault.create_key(tenant)
    old_public = kv.private_key(tenant).public_key()
    wrapped = old_public.encrypt(b"k" * 32, OAEP256)

    with pytest.raises(KeyRuleError, match=r"already has a key .* use --rotate"):
        vault.create_key(tenant)
    assert kv.versions(tenant) == [first.version]

    second = vault.create_key(tenant, rotate=True)
    assert kv.versions(tenant) == [first.version, second.version]
    # The old version still decrypts drops wrapped before the rotation.
    with CryptographyClient(kv.key_id(tenant, first.version), kv.credential, **kv.client_kwargs()) as crypto:
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, wrapped).plaintext == b"k" * 32
    report = vault.check()
    assert [(k.version, k.current) for k in report.keys] == [(second.version, True), (first.version, False)]
    assert report.ok, report.problems


@pytest.mark.parametrize(
    ("password", "pkcs1"),
    [(None, True), (PASSPHRASE, False), (PASSPHRASE, True)],
    ids=["pkcs1-plain", "pkcs8-passphrase", "pkcs1-passphrase"],
)
def test_import_maps_every_jwk_field_so_the_vault_decrypts(
    kv: KeyVaultStandIn, vault: VaultKeys, key_a: rsa.RSAPrivateKey, password: bytes | None, pkcs1: bool
) -> None:
    tenant = new_tenant()
    created = vault.import_pem(tenant, pem_of(key_a, password, pkcs1=pkcs1), password, expires_in_days=30)

    assert kv.private_key(tenant).private_numbers() == key_a.private_numbers()
    wrapped = key_a.public_key().encrypt(b"file-key-" * 3 + b"xxxxx", OAEP256)
    with CryptographyClient(created.where, kv.credential, **kv.client_kwargs()) as crypto:
        assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, wrapped).plaintext == b"file-key-" * 3 + b"xxxxx"
    [put] = kv.requests_matching(method="PUT")
    assert put.body["attributes"]["exp"] == int(created.expires_on.timestamp())
    numbers = key_a.private_numbers()
    for field, value in {
        "n": numbers.public_numbers.n,
        "e": numbers.public_numbers.e,
        "d": numbers.d,
        "p": numbers.p,
        "q": numbers.q,
        "dp": numbers.dmp1,
        "dq": numbers.dmq1,
        "qi": numbers.iqmp,
    }.items():
        assert int.from_bytes(b64url_decode(put.body["key"][field]), "big") == value, field


def test_import_needs_the_right_passphrase_and_sends_nothing_otherwise(
    kv: KeyVaultStandIn, vault: VaultKeys, key_a: rsa.RSAPrivateKey
) -> None:
    pem = pem_of(key_a, PASSPHRASE)
    with pytest.raises(PassphraseNeeded, match="encrypted"):
        vault.import_pem(new_tenant(), pem)
    with pytest.raises(KeyRuleError, match="wrong passphrase"):
        vault.import_pem(new_tenant(), pem, b"not it")
    with pytest.raises(KeyRuleError, match="no private key"):
        vault.import_pem(
            new_tenant(),
            key_a.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    assert kv.requests == []


def test_import_rejects_a_3072_bit_key(kv: KeyVaultStandIn, vault: VaultKeys, key_3072: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KeyRuleError, match=r"RSA-3072.*must be RSA-2048"):
        vault.import_pem(new_tenant(), pem_of(key_3072))
    assert kv.requests_matching(method="PUT") == [] and kv.key_names() == []


def test_import_rejects_a_key_any_other_tenant_uses_in_any_version(
    kv: KeyVaultStandIn, vault: VaultKeys, key_a: rsa.RSAPrivateKey, key_b: rsa.RSAPrivateKey
) -> None:
    other = new_tenant()
    old = kv.add_key(other, key_a, exp=2_000_000_000)  # key_a is only an OLD version of the other tenant
    kv.add_key(other, key_b, exp=2_000_000_000)
    tenant = new_tenant()
    with pytest.raises(KeyRuleError, match=f"already tenant {other}'s key \\(version {old}\\)"):
        vault.import_pem(tenant, pem_of(key_a))
    assert kv.versions(tenant) == [] and kv.requests_matching(method="PUT") == []


# --------------------------------------------------------------------------------------------------
# keys check / export-public
# --------------------------------------------------------------------------------------------------
def seed_vault_with_problems(
    kv: KeyVaultStandIn, key_a: rsa.RSAPrivateKey, key_3072: rsa.RSAPrivateKey
) -> dict[str, str]:
    now = int(datetime.now(UTC).timestamp())
    tenants = {name: new_tenant() for name in ("healthy", "expired", "soon", "dup1", "dup2", "big", "noexp", "off")}
    kv.add_key(
        tenants["healthy"], rsa.generate_private_key(public_exponent=65537, key_size=2048), exp=now + 200 * 86400
    )
    kv.add_key(tenants["expired"], rsa.generate_private_key(public_exponent=65537, key_size=2048), exp=now - 86400)
    kv.add_key(tenants["soon"], rsa.generate_private_key(public_exponent=65537, key_size=2048), exp=now + 5 * 86400)
    kv.add_key(tenants["dup1"], key_a, exp=now + 300 * 86400)
    kv.add_key(tenants["dup2"], key_a, exp=now + 300 * 86400)
    kv.add_key(tenants["big"], key_3072, exp=now + 300 * 86400)
    kv.add_key(tenants["noexp"], rsa.generate_private_key(public_exponent=65537, key_size=2048), exp=None)
    kv.add_key(
        tenants["off"],
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        exp=now + 300 * 86400,
        enabled=False,
    )
    kv.add_key("some-other-secret-key", key_a, exp=None)  # not a tenant key: ignored
    return tenants


def test_check_flags_expired_soon_expiring_wrong_size_duplicates_and_exits_non_zero(
    kv: KeyVaultStandIn, vault: VaultKeys, key_a: rsa.RSAPrivateKey, key_3072: rsa.RSAPrivateKey
) -> None:
    tenants = seed_vault_with_problems(kv, key_a, key_3072)
    report = vault.check(soon_days=30)
    by_tenant = {k.tenant: k for k in report.keys}
    assert set(by_tenant) == set(tenants.values()) and report.ignored == ("some-other-secret-key",)

    def problems(name: str) -> str:
        return " | ".join(by_tenant[tenants[name]].problems)

    assert problems("healthy") == ""
    assert "expired on" in problems("expired")
    assert "expires in 5 days" in problems("soon") and by_tenant[tenants["soon"]].days_left(report.checked_at) == 5
    assert f"same key as tenant {tenants['dup2']}" in problems("dup1")
    assert f"same key as tenant {tenants['dup1']}" in problems("dup2")
    assert "RSA-3072, must be RSA-2048" in problems("big")
    assert "no expiry date" in problems("noexp")
    assert "disabled" in problems("off")
    assert not report.ok

    done = cli("keys", "check", "--vault-url", kv.url, "--json", kv=kv)
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is False and {k["tenant"] for k in doc["keys"] if not k["problems"]} == {tenants["healthy"]}
    assert "8 tenant(s)" in done.stderr and "7 problem(s)" in done.stderr
    assert no_private_material(done.stdout + done.stderr, key_a, key_3072)


def test_check_of_a_healthy_vault_exits_zero(kv: KeyVaultStandIn, vault: VaultKeys) -> None:
    tenant = new_tenant()
    vault.create_key(tenant, expires_in_days=200)
    vault.create_key(tenant, expires_in_days=100, rotate=True)
    done = cli("keys", "check", "--vault-url", kv.url, kv=kv)
    assert done.returncode == 0, done.stderr
    header, *rows = (line.split() for line in done.stdout.splitlines())
    assert header == ["TENANT", "VERSION", "CURRENT", "SIZE", "ENABLED", "EXPIRES", "DAYS_LEFT", "STATUS"]
    current, older = rows
    expiry = (datetime.now(UTC) + timedelta(days=100)).date().isoformat()
    assert current[0] == tenant and current[2:] == ["yes", "2048", "yes", expiry, "100", "ok"]
    assert older[0] == tenant and older[2:4] == ["2048", "yes"] and older[-1] == "ok"  # no CURRENT mark


def test_export_public_matches_the_stored_key(kv: KeyVaultStandIn, vault: VaultKeys) -> None:
    tenant = new_tenant()
    created = vault.create_key(tenant)
    stored = kv.private_key(tenant).public_key().public_numbers()

    done = cli("keys", "export-public", "--tenant", tenant, "--vault-url", kv.url, kv=kv)
    assert done.returncode == 0, done.stderr
    pem_end = done.stdout.index("-----END PUBLIC KEY-----") + len("-----END PUBLIC KEY-----\n")
    public = serialization.load_pem_public_key(done.stdout[:pem_end].encode())
    assert isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == stored
    jwk = json.loads(done.stdout[pem_end:])
    assert jwk["kty"] == "RSA" and jwk["kid"] == created.where
    assert int.from_bytes(b64url_decode(jwk["n"]), "big") == stored.n
    assert int.from_bytes(b64url_decode(jwk["e"]), "big") == stored.e
    assert no_private_material(done.stdout, kv.private_key(tenant))

    public_key, version = public_key_from_vault(kv.url, tenant, credential=kv.credential, **kv.client_kwargs())
    assert public_key.public_numbers() == stored and version == created.version
    with pytest.raises(KeyNotFound, match="has no key for tenant"):
        vault.export_public(new_tenant())


# --------------------------------------------------------------------------------------------------
# The CLI against the stand-in
# --------------------------------------------------------------------------------------------------
def test_cli_create_refuse_rotate_and_import_with_passphrase_from_env(
    kv: KeyVaultStandIn, key_a: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    tenant = new_tenant()
    first = cli("keys", "create", "--tenant", tenant, "--expires-in", "60", "--vault-url", kv.url, kv=kv)
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created["tenant"] == tenant and kv.versions(tenant) == [created["version"]]
    assert datetime.fromisoformat(created["expires_on"]).date() == (datetime.now(UTC) + timedelta(days=60)).date()

    again = cli("keys", "create", "--tenant", tenant, "--vault-url", kv.url, kv=kv)
    assert again.returncode == 1 and "already has a key" in again.stderr and "--rotate" in again.stderr
    rotated = cli("keys", "create", "--tenant", tenant, "--rotate", "--vault-url", kv.url, kv=kv)
    assert rotated.returncode == 0 and len(kv.versions(tenant)) == 2

    pem = tmp_path / "partner-key.pem"
    pem.write_bytes(pem_of(key_a, PASSPHRASE))
    other = new_tenant()
    no_pass = cli("keys", "import", "--tenant", other, "--pem", str(pem), "--vault-url", kv.url, kv=kv)
    assert no_pass.returncode == 1 and "--password-env" in no_pass.stderr  # no terminal: no prompt
    unset = cli(
        "keys",
        "import",
        "--tenant",
        other,
        "--pem",
        str(pem),
        "--password-env",
        "NOPE_NOT_SET",
        "--vault-url",
        kv.url,
        kv=kv,
    )
    assert unset.returncode == 1 and "NOPE_NOT_SET" in unset.stderr
    assert kv.versions(other) == []
    imported = cli(
        "keys",
        "import",
        "--tenant",
        other,
        "--pem",
        str(pem),
        "--password-env",
        "PARTNER_KEY_PASS",
        "--vault-url",
        kv.url,
        kv=kv,
        env={"PARTNER_KEY_PASS": PASSPHRASE.decode()},
    )
    assert imported.returncode == 0, imported.stderr
    assert kv.private_key(other).private_numbers() == key_a.private_numbers()
    assert json.loads(imported.stdout)["version"] == kv.versions(other)[0]
    dup = cli(
        "keys",
        "import",
        "--tenant",
        new_tenant(),
        "--pem",
        str(pem),
        "--password-env",
        "P",
        "--vault-url",
        kv.url,
        kv=kv,
        env={"P": PASSPHRASE.decode()},
    )
    assert dup.returncode == 1 and f"already tenant {other}'s key" in dup.stderr
    for done in (first, again, rotated, no_pass, unset, imported, dup):
        assert no_private_material(done.stdout + done.stderr, key_a) and PASSPHRASE.decode() not in done.stdout


def test_cli_import_prompts_for_the_passphrase_in_a_terminal(
    kv: KeyVaultStandIn, key_b: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    pem = tmp_path / "offline.pem"
    pem.write_bytes(pem_of(key_b, PASSPHRASE, pkcs1=True))
    tenant = new_tenant()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEY_")}
    env |= {"REQUESTS_CA_BUNDLE": kv.cert_path, "VIVA_RELAY_TEST_TOKEN": kv.credential.token}
    terminal, terminal_end = os.openpty()  # stdin is a terminal, as for an operator at a shell
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "viva_relay",
            "keys",
            "import",
            "--tenant",
            tenant,
            "--pem",
            str(pem),
            "--vault-url",
            kv.url,
        ],
        stdin=terminal_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    ) as proc:
        os.close(terminal_end)
        assert proc.stderr is not None
        prompt = b""
        while b"Passphrase for" not in prompt:  # getpass flushes typed-ahead input: wait for the prompt
            ready, _, _ = select.select([proc.stderr], [], [], 60)
            assert ready, f"no passphrase prompt: {prompt!r}"
            chunk = os.read(proc.stderr.fileno(), 1024)
            assert chunk, prompt
            prompt += chunk
        os.write(terminal, PASSPHRASE + b"\n")
        out, err = proc.communicate(timeout=60)
    os.close(terminal)
    assert proc.returncode == 0, err
    assert kv.private_key(tenant).private_numbers() == key_b.private_numbers()
    assert json.loads(out)["tenant"] == tenant and PASSPHRASE not in out + err


@pytest.mark.parametrize(
    "command",
    [
        ["keys"],
        ["keys", "create"],
        ["keys", "import"],
        ["keys", "check"],
        ["keys", "export-public"],
        ["consent-link"],
        ["drop", "decrypt"],
    ],
)
def test_every_new_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: viva-relay {' '.join(command)}") and "--" in out


def test_bad_input_is_a_usage_or_configuration_error(tmp_path: Path) -> None:
    bad_days = cli("keys", "create", "--tenant", new_tenant(), "--expires-in", "0", "--key-folder", str(tmp_path))
    assert bad_days.returncode == 2 and "1 to 3650 days" in bad_days.stderr
    both = cli("keys", "check", "--vault-url", "https://x.vault.azure.net", "--key-folder", str(tmp_path))
    assert both.returncode == 2 and "not allowed with" in both.stderr
    not_https = cli("keys", "check", "--vault-url", "http://x.vault.azure.net")
    assert not_https.returncode == 3 and "https://" in not_https.stderr
    missing_url = cli("keys", "check", env={"KEY_SOURCE": "keyvault"})
    assert missing_url.returncode == 3 and "KEY_VAULT_URL" in missing_url.stderr


def test_test_token_hook_only_reaches_loopback() -> None:
    env = {"VIVA_RELAY_TEST_TOKEN": "t"}
    with pytest.raises(ConfigError, match="local stand-ins only"):
        default_credential(env, target="https://real.vault.azure.net")
    assert default_credential(env, target="https://127.0.0.1:8443").get_token("x").token == "t"
    assert type(default_credential({})).__name__ == "DefaultAzureCredential"
    assert runtime_module.keyvault_client_options({}, "https://127.0.0.1:8443") == {}
    assert runtime_module.keyvault_client_options(env, "https://real.vault.azure.net") == {}
    assert runtime_module.keyvault_client_options(env, "https://127.0.0.1:8443") == {"verify_challenge_resource": False}
    # A runtime refuses the test token as soon as any endpoint it could reach is not a loopback stand-in.
    from shared.config import Settings

    rt = runtime_module.Runtime(
        Settings.from_env(
            env
            | {
                "KEY_SOURCE": "keyvault",
                "KEY_VAULT_URL": "https://127.0.0.1:8443",
                "RelayStorage__queueServiceUri": "https://prod.queue.core.windows.net",
            }
        )
    )
    with pytest.raises(ConfigError, match=r"prod\.queue\.core\.windows\.net"):
        _ = rt.credential


def test_consent_link_prints_the_admin_center_url() -> None:
    app_tenant, app_id = "3F2504E0-4F89-41D3-9A0C-0305E82C3301", "b1c2d3e4-0000-4000-8000-0123456789ab"
    done = cli("consent-link", "--app-tenant", app_tenant, "--app-id", app_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"https://admin.microsoft.com/Adminportal/Home#/Settings/MGDCAdminCenter/{app_tenant.lower()}/{app_id}\n"
    )
    bad = cli("consent-link", "--app-tenant", "contoso", "--app-id", app_id)
    assert bad.returncode == 2 and "not a tenant id" in bad.stderr


# --------------------------------------------------------------------------------------------------
# The local key folder follows the same rules
# --------------------------------------------------------------------------------------------------
def test_key_folder_import_check_and_export_follow_the_same_rules(
    tmp_path: Path, key_a: rsa.RSAPrivateKey, key_3072: rsa.RSAPrivateKey
) -> None:
    folder = KeyFolder(tmp_path / "keys")
    tenant, other, legacy = new_tenant(), new_tenant(), new_tenant()
    imported = folder.import_pem(tenant, pem_of(key_a, PASSPHRASE, pkcs1=True), PASSPHRASE, expires_in_days=5)
    assert folder.load(Path(imported.where)).private_numbers() == key_a.private_numbers()
    assert oct(Path(imported.where).stat().st_mode & 0o777) == "0o600"
    with pytest.raises(KeyRuleError, match=f"already tenant {tenant}'s key"):
        folder.import_pem(other, pem_of(key_a))
    with pytest.raises(KeyRuleError, match="RSA-3072"):
        folder.import_pem(other, pem_of(key_3072))
    with pytest.raises(Exception, match="already has a key"):
        folder.import_pem(tenant, pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    folder.create_key(other, expires_in_days=365)
    # A key written before expiry dates were recorded (the PEM alone).
    (tmp_path / "keys" / f"{legacy}.pem").write_bytes(
        pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    report = folder.check(soon_days=30)
    problems = {k.tenant: " | ".join(k.problems) for k in report.keys}
    assert "expires in 5 days" in problems[tenant]
    assert problems[other] == "" and "no expiry date" in problems[legacy]

    pem, jwk = folder.export_public(tenant)
    assert (
        pem
        == key_a.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert int.from_bytes(b64url_decode(jwk["n"]), "big") == key_a.public_key().public_numbers().n
    assert jwk["kid"] == key_version(key_a.public_key())

    done = cli("keys", "check", "--key-folder", str(tmp_path / "keys"))
    assert done.returncode == 1 and "expires in 5 days" in done.stdout
    assert no_private_material(done.stdout + done.stderr, key_a)


# --------------------------------------------------------------------------------------------------
# A drop end to end through Key Vault: simulate, ingest (Azurite), decrypt with the CLI
# --------------------------------------------------------------------------------------------------
def expected_rows(n: int) -> list[dict[str, Any]]:
    return [json.loads(r) for r in generate_rows(n)]


def delivered_rows(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for m in sorted((m for m in messages if m["type"] == "rows"), key=lambda m: m["seq"]):
        rows.extend(m["rows"])
    return rows


def vault_relay(azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn) -> tuple[Relay, Runtime]:
    """A relay on Azurite whose keys are in the stand-in: KEY_SOURCE=keyvault, the real clients."""
    relay = make_relay(azurite, tmp_path, KEY_SOURCE="keyvault", KEY_VAULT_URL=kv.url)
    rt = Runtime(
        Settings.from_env(relay.env), credential=kv.credential, keyvault_kwargs=kv.client_kwargs() | FAST_RETRY
    )
    return relay, rt


def test_drop_wrapped_with_the_vault_key_is_ingested_and_decrypted_through_key_vault(
    azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn, vault: VaultKeys
) -> None:
    relay, rt = vault_relay(azurite, tmp_path, kv)
    tenant = new_tenant()
    created = vault.create_key(tenant)
    container = relay.landing.container_name
    storage_env = {"LandingStorage": azurite.connection_string}

    simulated = cli(
        "drop",
        "simulate",
        "--tenant",
        tenant,
        "--rows",
        "300",
        "--container",
        container,
        "--vault-url",
        kv.url,
        kv=kv,
        env=storage_env,
    )
    assert simulated.returncode == 0, simulated.stderr
    sim = json.loads(simulated.stdout)
    assert sim["key_version"] == created.version
    metadata_path = sim["metadata"]

    outcome = ingest_metadata_blob(rt, container, metadata_path)
    assert outcome.status == "delivered", outcome.reason
    assert delivered_rows(read_queue(relay.rt.queue)) == expected_rows(300)
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "delivered" and record.key_version == created.version
    assert kv.requests_matching(f"/keys/{tenant}/{created.version}/decrypt", "POST")

    drop_root = metadata_path[: -len("/metadata/JobMetadata/Metadata.json")]
    decrypted = cli("drop", "decrypt", f"{container}/{drop_root}", "--vault-url", kv.url, kv=kv, env=storage_env)
    assert decrypted.returncode == 0, decrypted.stderr
    assert [json.loads(line) for line in decrypted.stdout.splitlines()] == expected_rows(300)
    # The blob URL form, pointing at the Metadata.json, with the vault taken from the settings.
    url = f"{relay.landing.url}/{metadata_path}"
    by_url = cli("drop", "decrypt", url, kv=kv, env=storage_env | {"KEY_SOURCE": "keyvault", "KEY_VAULT_URL": kv.url})
    assert by_url.returncode == 0, by_url.stderr
    assert [json.loads(line) for line in by_url.stdout.splitlines()] == expected_rows(300)
    assert f"key version {created.version}" in by_url.stderr


def test_blob_drop_in_another_tenants_folder_is_refused_by_decrypt(
    azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn, vault: VaultKeys
) -> None:
    relay, _rt = vault_relay(azurite, tmp_path, kv)
    tenant, other = new_tenant(), new_tenant()
    vault.create_key(tenant)
    public, version = vault.public_key(tenant)
    root = sample_layout_root(other)[0]  # lies in the other tenant's folder
    simulate_drop(BlobWriter(relay.landing, root), tenant_id=tenant, public_key=public, key_version=version, rows=5)
    done = cli(
        "drop",
        "decrypt",
        f"{relay.landing.container_name}/{root}",
        "--vault-url",
        kv.url,
        kv=kv,
        env={"LandingStorage": azurite.connection_string},
    )
    assert done.returncode == 1 and "tenant_mismatch" in done.stderr and done.stdout == ""
    assert kv.requests_matching("/decrypt") == []


def test_key_vault_outage_during_ingest_is_transient_and_the_drop_is_delivered_later(
    azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn, vault: VaultKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda _a, _b: 0.0)  # the ingest's own backoff: no waiting
    relay, rt = vault_relay(azurite, tmp_path, kv)
    tenant = new_tenant()
    vault.create_key(tenant)
    public, version = vault.public_key(tenant)
    root = sample_layout_root(tenant)[0]
    sim = simulate_drop(
        BlobWriter(relay.landing, root), tenant_id=tenant, public_key=public, key_version=version, rows=120
    )

    kv.set_available(False)
    retrying = ingest_metadata_blob(rt, relay.landing.container_name, sim.metadata_path)
    assert retrying.status == "retrying" and "Key Vault" in retrying.reason
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "in_progress" and not record.lease_active(datetime.now(UTC))  # lease given back
    assert "503" in str(record.last_error)
    assert read_queue(relay.rt.queue) == []

    kv.set_available(True)
    again = ingest_metadata_blob(rt, relay.landing.container_name, sim.metadata_path)
    assert again.status == "delivered", again.reason
    assert delivered_rows(read_queue(relay.rt.queue)) == expected_rows(120)


@pytest.mark.parametrize("problem", ["wrong_key", "disabled_key"])
def test_wrong_or_disabled_key_fails_the_drop_with_a_clear_reason(
    azurite: Azurite, tmp_path: Path, kv: KeyVaultStandIn, vault: VaultKeys, key_b: rsa.RSAPrivateKey, problem: str
) -> None:
    relay, rt = vault_relay(azurite, tmp_path, kv)
    tenant = new_tenant()
    created = vault.create_key(tenant)
    public, version = vault.public_key(tenant)
    if problem == "wrong_key":
        public = key_b.public_key()  # wrapped for a key this vault does not hold under this tenant
    else:
        with key_client(kv) as client:
            client.update_key_properties(tenant, created.version, enabled=False)
    root = sample_layout_root(tenant)[0]
    sim = simulate_drop(
        BlobWriter(relay.landing, root), tenant_id=tenant, public_key=public, key_version=version, rows=10
    )

    outcome = ingest_metadata_blob(rt, relay.landing.container_name, sim.metadata_path)
    assert outcome.status == "failed" and outcome.code == "key_unwrap_failed"
    [record] = list(relay.rt.ledger.list(tenant=tenant))
    assert record.state == "failed" and record.reason_code == "key_unwrap_failed"
    if problem == "wrong_key":
        assert "could not be unwrapped" in str(record.reason)
    else:
        assert "refused to decrypt" in str(record.reason) and "enabled" in str(record.reason)
    # No row was sent; consumers get only the drop's `failed` message.
    assert [(m["type"], m["code"]) for m in read_queue(relay.rt.queue)] == [("failed", "key_unwrap_failed")]
