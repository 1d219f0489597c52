"""Authentication: Neon's JWTs (EdDSA / Ed25519), verified with PyJWT.

Rules (shared/reference/neon-protocols.md 1.1 and 6):

- A token is a JWT signed with Ed25519 (``alg`` EdDSA; nothing else is accepted).  Its
  claims: ``scope`` (lowercase: ``tenant``, ``pageserverapi``, ...), ``tenant_id`` (32
  hex, required with scope ``tenant``), optionally ``exp`` (checked when present).
- Public keys are PEM files: ``auth_validation_public_key_path`` names one file or a
  directory whose every file is a key.  A token is valid if any key verifies it, so keys
  rotate by adding the new key, moving clients to it, then removing the old one.  The
  key set is read again when a file under the path changes (a stat per check, cached
  for ``RELOAD_CHECK_INTERVAL`` seconds).
- A token that verified is remembered (up to ``VERIFIED_CACHE_SIZE`` of them) with its
  claims and expiry, so a client that sends the same token on every call pays one
  Ed25519 verify, not one per call.  The memory is dropped whenever the key set changes
  (a removed key's tokens are refused from then on) and an entry past its ``exp`` is
  refused as expired, as a fresh verify would.
- ``check_tenant``: scope ``tenant`` may act on its own tenant only; ``pageserverapi``
  on anything; every other scope is refused.  ``check_server``: server-wide operations
  (list tenants, create one) need ``pageserverapi``.
- Refusals are AuthenticationError (no, bad, expired or unverifiable token: gRPC
  UNAUTHENTICATED, HTTP 401, SQLSTATE 28P01) and PermissionDenied (a valid token that
  does not cover the request: PERMISSION_DENIED, 403, 28000).  Their messages say why,
  never echo the token.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pagestore.errors import AuthenticationError, ConfigError, PermissionDenied
from pagestore.ids import TenantId

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pagestore.config import Config

ALGORITHM = "EdDSA"
#: Neon's scopes (lowercase, as they serialize).
SCOPES = ("tenant", "tenantendpoint", "pageserverapi", "safekeeperdata", "generations_api",
          "admin", "infra", "scrubber", "controller_peer")
#: Seconds between two looks at the key files for a change.
RELOAD_CHECK_INTERVAL = 1.0
#: Verified tokens remembered by a JwtVerifier (dropped all at once when full).
VERIFIED_CACHE_SIZE = 4096
#: The auth types of a port (Neon's names).
AUTH_TYPES = ("Trust", "NeonJWT")


@dataclass(frozen=True, slots=True)
class Claims:
    scope: str
    tenant_id: TenantId | None

    def check_tenant(self, tenant: TenantId | str) -> None:
        """PermissionDenied unless the token may act on ``tenant``."""
        if self.scope == "pageserverapi":
            return
        if self.scope != "tenant":
            raise PermissionDenied(f"JWT scope '{self.scope}' is ineligible for this request "
                                   "(it needs scope 'tenant' or 'pageserverapi')")
        if self.tenant_id is None or str(self.tenant_id) != str(tenant):
            raise PermissionDenied(f"the token is for tenant {self.tenant_id}, not {tenant}")

    def check_server(self) -> None:
        """PermissionDenied unless the token may act on the whole server."""
        if self.scope != "pageserverapi":
            raise PermissionDenied(f"JWT scope '{self.scope}' is ineligible for this request "
                                   "(it needs scope 'pageserverapi')")


def _key_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def load_public_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key (PEM) in ``paths`` (files, or directories of files)."""
    keys: list[Ed25519PublicKey] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"auth_validation_public_key_path {path} does not exist")
        for f in _key_files(path):
            try:
                key = serialization.load_pem_public_key(f.read_bytes())
            except (ValueError, OSError) as e:
                raise ConfigError(f"{f} is not a PEM public key: {e}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{f} is not an Ed25519 public key (pagestore verifies "
                                  "EdDSA tokens only)")
            keys.append(key)
    if not keys:
        raise ConfigError(f"no public keys in {', '.join(map(str, paths))}")
    return keys


class JwtVerifier:
    """Verifies tokens against the key files under ``paths`` (re-read when they change)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._lock = threading.Lock()
        self._stamp = self._fingerprint()
        self._checked = time.monotonic()
        #: the key set and the tokens it verified (token -> claims, exp or None), replaced
        #: together so no token verified by a removed key outlives it
        self._state: tuple[list[Ed25519PublicKey], dict[str, tuple[Claims, float | None]]]
        self._state = (load_public_keys(self.paths), {})

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self.paths:
            try:
                files = _key_files(path)
            except OSError:
                continue
            for f in files:
                try:
                    st = f.stat()
                except OSError:
                    continue
                out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def keys(self) -> list[Ed25519PublicKey]:
        return self._current()[0]

    def _current(self) -> tuple[list[Ed25519PublicKey], dict[str, tuple[Claims, float | None]]]:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_INTERVAL:
            with self._lock:
                self._checked = now
                stamp = self._fingerprint()
                if stamp != self._stamp:
                    try:
                        self._state = (load_public_keys(self.paths), {})
                        self._stamp = stamp
                    except ConfigError:
                        pass  # mid-rotation (a file half written): keep the old set
        return self._state

    def verify(self, token: str) -> Claims:
        """The token's claims; AuthenticationError if no key verifies it."""
        if not token:
            raise AuthenticationError("missing token: this port requires a JWT "
                                      "(`pagestore auth token`)")
        keys, verified = self._current()
        hit = verified.get(token)
        if hit is not None:
            claims, exp = hit
            if exp is not None and exp <= time.time():
                raise AuthenticationError("the token has expired")
            return claims
        error = "no key verifies its signature"
        for key in keys:
            try:
                raw = jwt.decode(token, key=key, algorithms=[ALGORITHM],
                                 options={"require": [], "verify_aud": False})
            except jwt.ExpiredSignatureError:
                raise AuthenticationError("the token has expired") from None
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as e:
                error = str(e)
                if isinstance(e, jwt.DecodeError):
                    break
                continue
            claims = claims_from(raw)
            exp = raw.get("exp")
            if len(verified) >= VERIFIED_CACHE_SIZE:
                verified.clear()
            verified[token] = (claims, float(exp) if exp is not None else None)
            return claims
        raise AuthenticationError(f"invalid token: {error}")


def claims_from(raw: dict[str, Any]) -> Claims:
    scope = raw.get("scope")
    if not isinstance(scope, str) or scope not in SCOPES:
        raise AuthenticationError(f"invalid token: unknown scope {scope!r}")
    tenant = raw.get("tenant_id")
    tenant_id = None
    if tenant is not None:
        try:
            tenant_id = TenantId.parse(str(tenant))
        except ValueError:
            raise AuthenticationError("invalid token: tenant_id is not a tenant id") from None
    if scope == "tenant" and tenant_id is None:
        raise AuthenticationError("invalid token: scope 'tenant' without a tenant_id")
    return Claims(scope, tenant_id)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' when there is none)."""
    if not header:
        return ""
    kind, _, token = header.strip().partition(" ")
    if kind.lower() != "bearer":
        raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


# ---------------------------------------------------------------------- keys and tokens
def generate_keypair(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 key pair as PEM files (the private one 0600); refuses to overwrite."""
    for p in (private_path, public_path):
        if p.exists():
            raise ConfigError(f"{p} exists already: not overwritten")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, OSError, TypeError) as e:
        raise ConfigError(f"{path} is not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def make_token(key: Ed25519PrivateKey, scope: str, tenant: TenantId | None = None, *,
               ttl: float | None = None) -> str:
    """A signed token; ``ttl`` seconds sets ``exp`` (None: no expiry, as Neon's)."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r} (known: {', '.join(SCOPES)})")
    if scope == "tenant" and tenant is None:
        raise ConfigError("scope 'tenant' needs a tenant id")
    claims: dict[str, Any] = {"scope": scope,
                              "tenant_id": str(tenant) if tenant is not None else None}
    if ttl is not None:
        claims["exp"] = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
    return jwt.encode(claims, key, algorithm=ALGORITHM)


# ---------------------------------------------------------------------- a stack's own
#: Where `pagestore start` keeps the services' own key pair and their pageserverapi
#: token (directory 0700, files 0600), under the workdir.
INTERNAL_DIR = Path("run") / "auth"
INTERNAL_PRIVATE = "internal.key"
INTERNAL_PUBLIC = "internal.pub"
INTERNAL_TOKEN = "internal.token"
#: Environment variable a client (the CLI, tests) takes its token from first.
TOKEN_ENV = "PAGESTORE_AUTH_TOKEN"


def internal_dir(workdir: Path) -> Path:
    return workdir / INTERNAL_DIR


def make_internal_credentials(workdir: Path) -> None:
    """A new key pair and pageserverapi token for the services of the stack in
    ``workdir`` (replacing the old ones: tokens of an earlier start stop working)."""
    d = internal_dir(workdir)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    for name in (INTERNAL_PRIVATE, INTERNAL_PUBLIC, INTERNAL_TOKEN):
        (d / name).unlink(missing_ok=True)
    generate_keypair(d / INTERNAL_PRIVATE, d / INTERNAL_PUBLIC)
    token = make_token(load_private_key(d / INTERNAL_PRIVATE), "pageserverapi")
    fd = os.open(d / INTERNAL_TOKEN, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


def internal_token(workdir: Path) -> str:
    """The services' token ('' if the stack made none: no port needs one)."""
    try:
        return (internal_dir(workdir) / INTERNAL_TOKEN).read_text().strip()
    except FileNotFoundError:
        return ""


def verifier_for(public_key_path: str, workdir: Path) -> JwtVerifier | None:
    """The keys a service accepts: the configured ones and the stack's own."""
    paths = [Path(public_key_path)] if public_key_path else []
    own = internal_dir(workdir) / INTERNAL_PUBLIC
    if own.exists():
        paths.append(own)
    return JwtVerifier(paths) if paths else None


def trusted_certificates(config: Config) -> bytes | None:
    """What clients trust on pagestore's TLS ports (None: TLS is off)."""
    if not config.tls:
        return None
    path = config.ssl_ca_file or config.ssl_cert_file
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path} (ssl_ca_file, or ssl_cert_file): {e}") from None
