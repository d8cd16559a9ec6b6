"""A local HTTPS stand-in for the Azure Key Vault keys REST API (7.x / 2025-07-01), RSA keys only.

The real ``azure-keyvault-keys`` clients talk to it over HTTPS::

    with KeyVaultStandIn() as kv:
        client = KeyClient(kv.url, kv.credential, **kv.client_kwargs())
        key = client.create_rsa_key("tenant", size=2048, expires_on=...)
        crypto = CryptographyClient(key.id, kv.credential, **kv.client_kwargs())

What it speaks: the challenge handshake (401 + ``WWW-Authenticate`` to a request without a token),
create / import / get / list (paged) / update / delete (soft delete: get, purge, recover deleted
keys) and the RSA operations encrypt / decrypt / wrapkey / unwrapkey with ``RSA-OAEP`` (SHA-1),
``RSA-OAEP-256`` and ``RSA1_5``, done for real with the stored private key. Key names are
case-insensitive as in Key Vault. Errors have Key Vault's shape ``{"error": {"code", "message"}}``.

Behaviour chosen to match the service: a disabled key still answers GET but refuses decrypt and
unwrapKey with 403 ``Forbidden`` (inner code ``KeyDisabled``); an operation missing from the
key's ``key_ops`` answers 403; a padding or length failure answers 400 ``BadParameter``; reusing
the name of a deleted, not yet purged key answers 409. ``exp``/``nbf`` are stored, not enforced.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .tls import HttpsStandIn, RecordedRequest, Reply, error_reply

__all__ = ["ALL_KEY_OPS", "KeyVaultStandIn", "b64url_decode", "b64url_encode"]

ALL_KEY_OPS: tuple[str, ...] = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
_NAME_RE = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_CRYPTO_OPS = {"encrypt": "encrypt", "decrypt": "decrypt", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
_PRIVATE_OPS = frozenset({"decrypt", "unwrapKey"})
_RSA_SIZES = (2048, 3072, 4096)
_RECOVERABLE_DAYS = 90
_NOT_FOUND_HINT = (
    " was not found in this key vault. If you recently deleted this key you may be able to recover it"
    " using the correct recovery command."
)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding, as Key Vault writes binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode Base64url with or without padding; raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("expected a Base64url string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_to_b64url(value: int) -> str:
    """Big-endian, unsigned, without leading zero bytes (what the SDK expects for n and e)."""
    return b64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _b64url_to_int(text: Any) -> int:
    return int.from_bytes(b64url_decode(text), "big")


def _padding_for(alg: str) -> padding.AsymmetricPadding | None:
    if alg == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    if alg == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    return None


def _pkcs1v15_decrypt(private_key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    """RSAES-PKCS1-v1_5 decryption with explicit padding errors.

    OpenSSL 3.2+ uses implicit rejection (a wrong padding yields random bytes, not an error); Key
    Vault answers 400, so the stand-in unpads by hand (timing side channels do not matter here).
    """
    numbers = private_key.private_numbers()
    modulus = numbers.public_numbers.n
    size = (modulus.bit_length() + 7) // 8
    value = int.from_bytes(ciphertext, "big")
    if value >= modulus:
        raise ValueError("ciphertext out of range")
    block = pow(value, numbers.d, modulus).to_bytes(size, "big")
    separator = block.find(b"\x00", 2)
    if block[:2] != b"\x00\x02" or separator < 10:
        raise ValueError("invalid PKCS#1 v1.5 padding")
    return block[separator + 1 :]


class _BadRequest(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body)
        self.reply = reply


def _bad(message: str, code: str = "BadParameter", status: int = 400) -> _BadRequest:
    return _BadRequest(error_reply(status, code, message))


@dataclass
class _KeyVersion:
    name: str
    version: str
    private_key: rsa.RSAPrivateKey
    kty: str
    key_ops: list[str]
    enabled: bool
    exp: int | None
    nbf: int | None
    created: int
    updated: int
    tags: dict[str, str] | None = None


@dataclass
class _Key:
    name: str
    versions: list[_KeyVersion] = field(default_factory=list)
    deleted_date: int | None = None
    scheduled_purge_date: int | None = None


def _parse_attributes(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("attributes must be an object")
    out: dict[str, Any] = {}
    if raw.get("enabled") is not None:
        if not isinstance(raw["enabled"], bool):
            raise _bad("attributes.enabled must be a boolean")
        out["enabled"] = raw["enabled"]
    for name in ("exp", "nbf"):
        if name in raw:
            value = raw[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise _bad(f"attributes.{name} must be an integer (epoch seconds)")
            out[name] = value
    return out


def _parse_key_ops(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(op, str) for op in raw):
        raise _bad("key_ops must be a list of strings")
    known = {op.lower(): op for op in ALL_KEY_OPS}
    ops: list[str] = []
    for op in raw:
        if op.lower() not in known:
            raise _bad(f"Invalid key operation: {op}")
        ops.append(known[op.lower()])
    return ops


def _parse_tags(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _bad("tags must be an object of strings")
    return {str(k): v for k, v in raw.items()}


class KeyVaultStandIn(HttpsStandIn):
    """Key Vault keys API on ``https://127.0.0.1:<port>`` for the real SDK clients.

    :param page_size: items per page of the list operations when the client sends no
        ``maxresults`` (small, so that paging is exercised).
    :param tenant_id: tenant named in the 401 challenge.
    :param token: the bearer token :attr:`credential` hands out.
    """

    bad_json_code = "BadParameter"

    def __init__(
        self,
        *,
        page_size: int = 2,
        tenant_id: str = "00000000-0000-0000-0000-000000000000",
        token: str | None = None,
    ) -> None:
        super().__init__(token=token)
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.page_size = page_size
        self.tenant_id = tenant_id
        self._keys: dict[str, _Key] = {}
        self._deleted: dict[str, _Key] = {}
        self._state_lock = threading.RLock()
        #: Secrets: name (lower case) -> versions, oldest first (version id, value, created).
        self._secrets: dict[str, list[tuple[str, str, int]]] = {}

    # -- helpers for tests ----------------------------------------------------------------------
    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``KeyClient`` / ``CryptographyClient`` to trust this server."""
        return {"verify_challenge_resource": False, "connection_verify": self.cert_path}

    def key_id(self, name: str, version: str | None = None) -> str:
        """The key identifier (``kid``) Key Vault would use; versionless when ``version`` is None."""
        with self._state_lock:
            key = self._keys.get(name.lower()) or self._deleted.get(name.lower())
            shown = key.name if key else name
        return f"{self.url}/keys/{shown}" + (f"/{version}" if version else "")

    def add_key(
        self,
        name: str,
        private_key: rsa.RSAPrivateKey,
        exp: int | None = None,
        *,
        nbf: int | None = None,
        enabled: bool = True,
        key_ops: list[str] | None = None,
        tags: dict[str, str] | None = None,
        hsm: bool = False,
    ) -> str:
        """Seed a new version of key ``name`` holding ``private_key``; returns the version."""
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid Key Vault key name: {name!r}")
        with self._state_lock:
            if name.lower() in self._deleted:
                raise ValueError(f"key {name!r} is deleted but not purged")
            return self._store(
                name,
                private_key,
                kty="RSA-HSM" if hsm else "RSA",
                key_ops=list(key_ops) if key_ops is not None else list(ALL_KEY_OPS),
                attributes={"enabled": enabled, "exp": exp, "nbf": nbf},
                tags=tags,
            ).version

    def private_key(self, name: str, version: str | None = None) -> rsa.RSAPrivateKey:
        """The private key stored for ``name`` (latest version unless ``version``); KeyError if none."""
        with self._state_lock:
            key = self._keys.get(name.lower())
            if key is None:
                raise KeyError(name)
            found = self._version_of(key, version or "")
            if found is None:
                raise KeyError(f"{name}/{version}")
            return found.private_key

    def versions(self, name: str) -> list[str]:
        """Versions of a live key, oldest first (empty if there is no such key)."""
        with self._state_lock:
            key = self._keys.get(name.lower())
            return [v.version for v in key.versions] if key else []

    def key_names(self) -> list[str]:
        """Names of the live (not deleted) keys."""
        with self._state_lock:
            return [k.name for k in self._keys.values()]

    def deleted_key_names(self) -> list[str]:
        """Names of deleted keys not yet purged."""
        with self._state_lock:
            return [k.name for k in self._deleted.values()]

    # -- HTTP ----------------------------------------------------------------------------------
    def _unauthorized(self) -> Reply:
        challenge = (
            f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
            'resource="https://vault.azure.net"'
        )
        reply = error_reply(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
        reply.headers["WWW-Authenticate"] = challenge
        return reply

    def _dispatch(self, request: RecordedRequest, headers: dict[str, str]) -> Reply:
        if "api-version" not in request.query:
            return error_reply(400, "BadParameter", "The 'api-version' query parameter is missing.")
        try:
            return self._route(request)
        except _BadRequest as exc:
            return exc.reply

    def _route(self, request: RecordedRequest) -> Reply:
        method, body = request.method, request.body
        segs = request.path.split("/")[1:]
        if segs and segs[0].lower() == "secrets":
            return self._secret_route(method, body, segs[1:])
        if not segs or segs[0].lower() not in ("keys", "deletedkeys"):
            return self._unsupported(request)
        collection, rest = segs[0].lower(), segs[1:]
        if collection == "keys":
            if rest in ([], [""]):
                if method == "GET":
                    return self._list_keys(request)
            elif len(rest) == 1:
                name = rest[0]
                if method == "PUT":
                    return self._import(name, body)
                if method == "DELETE":
                    return self._delete(name)
                if method == "GET":
                    return self._get(name, "")
            elif len(rest) == 2:
                name, second = rest
                low = second.lower()
                if method == "POST" and low == "create":
                    return self._create(name, body)
                if method == "GET" and low == "versions":
                    return self._list_versions(name, request)
                if method == "POST" and low in _CRYPTO_OPS:
                    return self._crypto(name, "", _CRYPTO_OPS[low], body)
                if method == "GET":
                    return self._get(name, second)
                if method == "PATCH":
                    return self._update(name, second, body)
            elif len(rest) == 3:
                name, version, op = rest
                if method == "POST" and op.lower() in _CRYPTO_OPS:
                    return self._crypto(name, version, _CRYPTO_OPS[op.lower()], body)
        elif rest in ([], [""]):
            if method == "GET":
                return self._list_deleted(request)
        elif len(rest) == 1:
            if method == "GET":
                return self._get_deleted(rest[0])
            if method == "DELETE":
                return self._purge(rest[0])
        elif len(rest) == 2 and rest[1].lower() == "recover" and method == "POST":
            return self._recover(rest[0])
        return self._unsupported(request)

    # -- secrets (Set Secret and Get Secret of the secrets REST API 7.x) ---------------------------
    def set_secret(self, name: str, value: str) -> str:
        """Add a new version of a secret (as ``az keyvault secret set`` does); returns the version."""
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid secret name {name!r}")
        version = uuid.uuid4().hex
        with self._state_lock:
            self._secrets.setdefault(name.lower(), []).append((version, value, int(time.time())))
        return version

    def _secret_bundle(self, name: str, version: str, value: str, created: int) -> dict[str, Any]:
        return {
            "value": value,
            "id": f"{self.url}/secrets/{name}/{version}",
            "attributes": {"enabled": True, "created": created, "updated": created, "recoveryLevel": "Recoverable"},
        }

    def _secret_route(self, method: str, body: Any, rest: list[str]) -> Reply:
        if len(rest) == 1 and method == "PUT":
            doc = body
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
                raise _bad("The request body must hold the secret's value.")
            version = self.set_secret(rest[0], doc["value"])
            return Reply(200, self._secret_bundle(rest[0], version, doc["value"], int(time.time())))
        if len(rest) in (1, 2) and method == "GET":
            name, wanted = rest[0], (rest[1] if len(rest) == 2 else "")
            with self._state_lock:
                versions = list(self._secrets.get(name.lower(), []))
            found = [v for v in versions if v[0] == wanted] if wanted else versions[-1:]
            if not found:
                message = f"A secret with (name/id) {name} was not found in this key vault."
                return error_reply(404, "SecretNotFound", message)
            version, value, created = found[-1]
            return Reply(200, self._secret_bundle(name, version, value, created))
        return error_reply(404, "NotFound", "The stand-in does not implement that secrets operation.")

    @staticmethod
    def _unsupported(request: RecordedRequest) -> Reply:
        return error_reply(404, "NotFound", f"The stand-in does not implement {request.method} {request.path}.")

    # -- model -------------------------------------------------------------------------------------
    @staticmethod
    def _version_of(key: _Key, version: str) -> _KeyVersion | None:
        if not key.versions:
            return None
        if not version:
            return key.versions[-1]
        for item in key.versions:
            if item.version == version.lower():
                return item
        return None

    def _find(self, name: str, version: str) -> _KeyVersion:
        key = self._keys.get(name.lower())
        found = self._version_of(key, version) if key else None
        if found is None:
            shown = f"{name}/{version}" if version else name
            raise _bad(f"A key with (name/id) {shown}{_NOT_FOUND_HINT}", "KeyNotFound", 404)
        return found

    def _store(
        self,
        name: str,
        private_key: rsa.RSAPrivateKey,
        *,
        kty: str,
        key_ops: list[str],
        attributes: dict[str, Any],
        tags: dict[str, str] | None,
    ) -> _KeyVersion:
        now = int(time.time())
        key = self._keys.setdefault(name.lower(), _Key(name))
        enabled = attributes.get("enabled")
        item = _KeyVersion(
            name=key.name,
            version=secrets.token_hex(16),
            private_key=private_key,
            kty=kty,
            key_ops=key_ops,
            enabled=True if enabled is None else bool(enabled),
            exp=attributes.get("exp"),
            nbf=attributes.get("nbf"),
            created=now,
            updated=now,
            tags=tags,
        )
        key.versions.append(item)
        return item

    def _attributes(self, item: _KeyVersion) -> dict[str, Any]:
        attrs: dict[str, Any] = {"enabled": item.enabled}
        if item.nbf is not None:
            attrs["nbf"] = item.nbf
        if item.exp is not None:
            attrs["exp"] = item.exp
        attrs.update(
            created=item.created,
            updated=item.updated,
            recoveryLevel="Recoverable+Purgeable",
            recoverableDays=_RECOVERABLE_DAYS,
        )
        return attrs

    def _bundle(self, item: _KeyVersion) -> dict[str, Any]:
        numbers = item.private_key.public_key().public_numbers()
        bundle: dict[str, Any] = {
            "key": {
                "kid": f"{self.url}/keys/{item.name}/{item.version}",
                "kty": item.kty,
                "key_ops": list(item.key_ops),
                "n": _int_to_b64url(numbers.n),
                "e": _int_to_b64url(numbers.e),
            },
            "attributes": self._attributes(item),
        }
        if item.tags:
            bundle["tags"] = dict(item.tags)
        return bundle

    def _deleted_bundle(self, key: _Key) -> dict[str, Any]:
        bundle = self._bundle(key.versions[-1])
        bundle.update(
            recoveryId=f"{self.url}/deletedkeys/{key.name}",
            deletedDate=key.deleted_date,
            scheduledPurgeDate=key.scheduled_purge_date,
        )
        return bundle

    def _check_new_name(self, name: str) -> None:
        if not _NAME_RE.match(name):
            raise _bad(
                f"The request URI contains an invalid name: {name}. Key names may contain only "
                "0-9, a-z, A-Z and -, up to 127 characters."
            )
        if name.lower() in self._deleted:
            reply = error_reply(
                409,
                "Conflict",
                f"Key {name} is currently in a deleted but recoverable state, and its name cannot be "
                "reused; in this state, the key can only be recovered or purged.",
            )
            reply.body["error"]["innererror"] = {"code": "ObjectIsDeletedButRecoverable"}
            raise _BadRequest(reply)

    # -- operations ----------------------------------------------------------------------------
    def _create(self, name: str, body: Any) -> Reply:
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.")
        kty = body.get("kty")
        if kty not in ("RSA", "RSA-HSM"):
            raise _bad(f"The stand-in supports only kty RSA and RSA-HSM, not {kty!r}.")
        size = body.get("key_size") or 2048
        if size not in _RSA_SIZES:
            raise _bad(f"Invalid key size {size}; RSA keys must be 2048, 3072 or 4096 bits.")
        exponent = body.get("public_exponent") or 65537
        if exponent not in (3, 65537):
            raise _bad(f"Unsupported public exponent {exponent}.")
        key_ops = _parse_key_ops(body.get("key_ops"))
        attributes = _parse_attributes(body.get("attributes"))
        tags = _parse_tags(body.get("tags"))
        with self._state_lock:
            self._check_new_name(name)
        private_key = rsa.generate_private_key(public_exponent=exponent, key_size=size)
        with self._state_lock:
            self._check_new_name(name)
            item = self._store(
                name,
                private_key,
                kty=kty,
                key_ops=key_ops if key_ops is not None else list(ALL_KEY_OPS),
                attributes=attributes,
                tags=tags,
            )
            return Reply(200, self._bundle(item))

    def _import(self, name: str, body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("key"), dict):
            raise _bad('The request body must be {"key": <JSON web key>}.')
        jwk: dict[str, Any] = body["key"]
        hsm = bool(body.get("Hsm") or body.get("hsm"))
        kty = jwk.get("kty")
        if kty not in ("RSA", "RSA-HSM"):
            raise _bad(f"The stand-in imports only RSA keys, not kty {kty!r}.")
        missing = [f for f in ("n", "e", "d", "p", "q") if not jwk.get(f)]
        if missing:
            raise _bad(f"The JSON web key lacks the private key fields {', '.join(missing)}.")
        try:
            n, e, d, p, q = (_b64url_to_int(jwk[f]) for f in ("n", "e", "d", "p", "q"))
            dp = _b64url_to_int(jwk["dp"]) if jwk.get("dp") else rsa.rsa_crt_dmp1(d, p)
            dq = _b64url_to_int(jwk["dq"]) if jwk.get("dq") else rsa.rsa_crt_dmq1(d, q)
            qi = _b64url_to_int(jwk["qi"]) if jwk.get("qi") else rsa.rsa_crt_iqmp(p, q)
            if p * q != n:
                raise ValueError("p * q != n")
            numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n))
            private_key = numbers.private_key()
        except (ValueError, TypeError) as exc:
            raise _bad(f"The JSON web key is not a valid RSA private key: {exc}") from None
        if private_key.key_size not in _RSA_SIZES:
            raise _bad(f"Invalid key size {private_key.key_size}; must be 2048, 3072 or 4096 bits.")
        key_ops = _parse_key_ops(jwk.get("key_ops"))
        attributes = _parse_attributes(body.get("attributes"))
        tags = _parse_tags(body.get("tags"))
        with self._state_lock:
            self._check_new_name(name)
            item = self._store(
                name,
                private_key,
                kty="RSA-HSM" if hsm or kty == "RSA-HSM" else "RSA",
                key_ops=key_ops if key_ops is not None else list(ALL_KEY_OPS),
                attributes=attributes,
                tags=tags,
            )
            return Reply(200, self._bundle(item))

    def _get(self, name: str, version: str) -> Reply:
        with self._state_lock:
            return Reply(200, self._bundle(self._find(name, version)))

    def _update(self, name: str, version: str, body: Any) -> Reply:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.")
        attributes = _parse_attributes(body.get("attributes"))
        key_ops = _parse_key_ops(body.get("key_ops"))
        tags = _parse_tags(body.get("tags"))
        with self._state_lock:
            item = self._find(name, version)
            if "enabled" in attributes:
                item.enabled = attributes["enabled"]
            if "exp" in attributes:
                item.exp = attributes["exp"]
            if "nbf" in attributes:
                item.nbf = attributes["nbf"]
            if key_ops is not None:
                item.key_ops = key_ops
            if "tags" in body:
                item.tags = tags
            item.updated = int(time.time())
            return Reply(200, self._bundle(item))

    def _delete(self, name: str) -> Reply:
        with self._state_lock:
            self._find(name, "")
            key = self._keys.pop(name.lower())
            now = int(time.time())
            key.deleted_date = now
            key.scheduled_purge_date = now + _RECOVERABLE_DAYS * 86400
            self._deleted[name.lower()] = key
            return Reply(200, self._deleted_bundle(key))

    def _deleted_key(self, name: str) -> _Key:
        key = self._deleted.get(name.lower())
        if key is None:
            raise _bad(f"Deleted Key not found: {name}", "KeyNotFound", 404)
        return key

    def _get_deleted(self, name: str) -> Reply:
        with self._state_lock:
            return Reply(200, self._deleted_bundle(self._deleted_key(name)))

    def _purge(self, name: str) -> Reply:
        with self._state_lock:
            self._deleted_key(name)
            del self._deleted[name.lower()]
            return Reply(204)

    def _recover(self, name: str) -> Reply:
        with self._state_lock:
            key = self._deleted_key(name)
            del self._deleted[name.lower()]
            key.deleted_date = key.scheduled_purge_date = None
            self._keys[name.lower()] = key
            return Reply(200, self._bundle(key.versions[-1]))

    def _page(self, items: list[dict[str, Any]], request: RecordedRequest) -> Reply:
        try:
            size = int(request.query.get("maxresults") or self.page_size)
            start = int(request.query.get("$skiptoken") or 0)
        except ValueError:
            raise _bad("maxresults and $skiptoken must be integers") from None
        if not 1 <= size <= 25:
            raise _bad("maxresults must be between 1 and 25")
        page = items[start : start + size]
        next_link = None
        if start + size < len(items):
            api = request.query["api-version"]
            next_link = f"{self.url}{request.path}?api-version={api}&$skiptoken={start + size}&maxresults={size}"
        return Reply(200, {"value": page, "nextLink": next_link})

    def _item(self, item: _KeyVersion, versioned: bool) -> dict[str, Any]:
        kid = f"{self.url}/keys/{item.name}" + (f"/{item.version}" if versioned else "")
        out: dict[str, Any] = {"kid": kid, "attributes": self._attributes(item)}
        if item.tags:
            out["tags"] = dict(item.tags)
        return out

    def _list_keys(self, request: RecordedRequest) -> Reply:
        with self._state_lock:
            items = [self._item(k.versions[-1], False) for k in self._keys.values() if k.versions]
        return self._page(items, request)

    def _list_versions(self, name: str, request: RecordedRequest) -> Reply:
        with self._state_lock:
            key = self._keys.get(name.lower())
            items = [self._item(v, True) for v in key.versions] if key else []
        return self._page(items, request)

    def _list_deleted(self, request: RecordedRequest) -> Reply:
        with self._state_lock:
            items = []
            for key in self._deleted.values():
                item = self._item(key.versions[-1], False)
                item.update(
                    recoveryId=f"{self.url}/deletedkeys/{key.name}",
                    deletedDate=key.deleted_date,
                    scheduledPurgeDate=key.scheduled_purge_date,
                )
                items.append(item)
        return self._page(items, request)

    def _crypto(self, name: str, version: str, op: str, body: Any) -> Reply:
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.")
        alg = body.get("alg")
        pad = _padding_for(alg) if isinstance(alg, str) else None
        if pad is None:
            raise _bad(f"Invalid algorithm {alg!r}: the stand-in supports RSA-OAEP, RSA-OAEP-256, RSA1_5.")
        try:
            value = b64url_decode(body["value"])
        except KeyError:
            raise _bad("The 'value' parameter is required.") from None
        except (ValueError, TypeError):
            raise _bad("The 'value' parameter is not valid Base64url.") from None
        with self._state_lock:
            item = self._find(name, version)
            kid = f"{self.url}/keys/{item.name}/{item.version}"
            private_key, enabled, key_ops = item.private_key, item.enabled, list(item.key_ops)
        if not enabled and op in _PRIVATE_OPS:
            reply = error_reply(403, "Forbidden", f"Operation {op} is not allowed on a disabled key.")
            reply.body["error"]["innererror"] = {"code": "KeyDisabled"}
            return reply
        if op not in key_ops:
            return error_reply(403, "Forbidden", f"Operation {op} is not permitted by the key's key_ops.")
        try:
            if op not in _PRIVATE_OPS:
                result = private_key.public_key().encrypt(value, pad)
            elif len(value) != (private_key.key_size + 7) // 8:
                raise ValueError("ciphertext length does not match the key size")
            elif alg == "RSA1_5":
                result = _pkcs1v15_decrypt(private_key, value)
            else:
                result = private_key.decrypt(value, pad)
        except ValueError as exc:
            raise _bad(f"Unable to {op} the specified value with algorithm {alg}: {exc}") from None
        return Reply(200, {"kid": kid, "value": b64url_encode(result)})
