"""pagestore.auth: Neon's EdDSA JWTs, verified with PyJWT; key files, rotation, claims."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from pagestore import auth
from pagestore.auth import Claims, JwtVerifier, generate_keypair, load_private_key, make_token
from pagestore.errors import AuthenticationError, ConfigError, PermissionDenied
from pagestore.ids import TenantId

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.unit

T1, T2 = TenantId.generate(), TenantId.generate()


def keypair(d: Path, name: str) -> tuple[Path, Path]:
    private, public = d / f"{name}.key", d / "keys" / f"{name}.pub"
    generate_keypair(private, public)
    return private, public


def test_tokens_verify_and_carry_their_claims(tmp_path: Path) -> None:
    private, public = keypair(tmp_path, "a")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    key = load_private_key(private)
    v = JwtVerifier([public])
    assert v.verify(make_token(key, "pageserverapi")) == Claims("pageserverapi", None)
    assert v.verify(make_token(key, "tenant", T1, ttl=60)) == Claims("tenant", T1)
    # The header says EdDSA, as Neon's tokens do.
    assert jwt.get_unverified_header(make_token(key, "tenant", T1))["alg"] == "EdDSA"


def test_refusals_say_why(tmp_path: Path) -> None:
    private, public = keypair(tmp_path, "a")
    other, _ = keypair(tmp_path, "b")
    v = JwtVerifier([public])
    key = load_private_key(private)
    with pytest.raises(AuthenticationError, match="missing token"):
        v.verify("")
    with pytest.raises(AuthenticationError, match="expired"):
        v.verify(make_token(key, "tenant", T1, ttl=-5))
    with pytest.raises(AuthenticationError, match="no key verifies"):
        v.verify(make_token(load_private_key(other), "pageserverapi"))
    with pytest.raises(AuthenticationError, match="invalid token"):
        v.verify("not.a.token")
    with pytest.raises(AuthenticationError, match="unknown scope"):
        v.verify(jwt.encode({"scope": "root"}, key, algorithm="EdDSA"))
    with pytest.raises(AuthenticationError, match="without a tenant_id"):
        v.verify(jwt.encode({"scope": "tenant"}, key, algorithm="EdDSA"))
    # Another algorithm (an ECDSA key, or none at all) is not accepted.
    ec = generate_private_key(SECP256R1())
    with pytest.raises(AuthenticationError):
        v.verify(jwt.encode({"scope": "pageserverapi"}, ec, algorithm="ES256"))
    unsigned = jwt.encode({"scope": "pageserverapi"}, None, algorithm="none")
    with pytest.raises(AuthenticationError):
        v.verify(unsigned)


def test_permissions_by_scope_and_tenant() -> None:
    Claims("pageserverapi", None).check_tenant(T1)
    Claims("pageserverapi", None).check_server()
    Claims("tenant", T1).check_tenant(T1)
    with pytest.raises(PermissionDenied, match="not"):
        Claims("tenant", T1).check_tenant(T2)
    with pytest.raises(PermissionDenied, match="ineligible"):
        Claims("tenant", T1).check_server()
    with pytest.raises(PermissionDenied, match="ineligible"):
        Claims("safekeeperdata", None).check_tenant(T1)


def test_a_key_directory_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "RELOAD_CHECK_INTERVAL", 0.0)
    old_private, old_public = keypair(tmp_path, "old")
    v = JwtVerifier([old_public.parent])
    old_token = make_token(load_private_key(old_private), "pageserverapi")
    v.verify(old_token)
    new_private, _ = keypair(tmp_path, "new")  # added beside the old key
    new_token = make_token(load_private_key(new_private), "pageserverapi")
    v.verify(new_token)
    v.verify(old_token)  # both valid during the rotation
    os.unlink(old_public)  # the file set changed: the next check reloads it
    with pytest.raises(AuthenticationError, match="no key verifies"):
        v.verify(old_token)
    v.verify(new_token)


def test_a_verified_token_is_remembered_until_it_expires(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = keypair(tmp_path, "a")
    key = load_private_key(private)
    v = JwtVerifier([public])
    token = make_token(key, "tenant", T1, ttl=30)
    decodes = 0
    real_decode = jwt.decode

    def counting_decode(*args: object, **kwargs: object) -> object:
        nonlocal decodes
        decodes += 1
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth.jwt, "decode", counting_decode)
    assert v.verify(token) == Claims("tenant", T1)
    assert v.verify(token) == Claims("tenant", T1)
    assert decodes == 1  # the second call did not verify the signature again
    # Past its exp the remembered token is refused as a fresh verify would refuse it.
    now = time.time()
    monkeypatch.setattr(auth.time, "time", lambda: now + 31)
    with pytest.raises(AuthenticationError, match="expired"):
        v.verify(token)
    # The memory is bounded: full, it starts again (and every token still verifies).
    monkeypatch.setattr(auth.time, "time", lambda: now)
    monkeypatch.setattr(auth, "VERIFIED_CACHE_SIZE", 3)
    tokens = [make_token(key, "tenant", TenantId.generate()) for _ in range(5)]
    for t in tokens:
        assert v.verify(t).scope == "tenant"
    assert len(v._current()[1]) <= 3


def test_key_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        JwtVerifier([tmp_path / "missing.pem"])
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        JwtVerifier([tmp_path / "junk.pem"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no public keys"):
        JwtVerifier([empty])
    private, public = keypair(tmp_path, "a")
    with pytest.raises(ConfigError, match="exists already"):
        generate_keypair(private, public)


def test_bearer_header() -> None:
    assert auth.bearer(None) == "" and auth.bearer("Bearer abc") == "abc"
    assert auth.bearer("bearer  abc ") == "abc"
    with pytest.raises(AuthenticationError, match="Bearer"):
        auth.bearer("Basic dXNlcjpwdw==")


def test_auth_types_default_to_trust_on_loopback_only() -> None:
    from pagestore.config import config_from_data

    cfg = config_from_data({})
    assert cfg.auth_type("grpc", "127.0.0.1:51051") == "Trust"
    assert cfg.auth_type("pg", "[::1]:64000") == "Trust"
    assert cfg.auth_type("pg", "localhost:64000") == "Trust"
    assert cfg.auth_type("http", "0.0.0.0:9898") == "NeonJWT"
    assert cfg.auth_type("grpc", "10.1.2.3:51051") == "NeonJWT"
    explicit = config_from_data({"grpc_auth_type": "Trust", "pg_auth_type": "NeonJWT"})
    assert explicit.auth_type("grpc", "0.0.0.0:1") == "Trust"
    assert explicit.auth_type("pg", "127.0.0.1:1") == "NeonJWT"
    with pytest.raises(ConfigError, match="pg_auth_type must be"):
        config_from_data({"pg_auth_type": "Password"})
    with pytest.raises(ConfigError, match="go together"):
        config_from_data({"ssl_cert_file": "/x.pem"})


def test_a_port_with_tokens_and_no_key_will_not_start(tmp_path: Path) -> None:
    from pagestore.config import config_from_data
    from pagestore.grpcutil import configure_clients
    from pagestore.service import security

    cfg = config_from_data({"grpc_auth_type": "NeonJWT"})
    with pytest.raises(ConfigError, match="no key to verify tokens"):
        security(cfg, "pageread", tmp_path)
    auth.make_internal_credentials(tmp_path)  # what `pagestore start` makes
    try:
        verifiers, tls = security(cfg, "pageread", tmp_path)
    finally:
        configure_clients()  # security() set this process's client token
    assert set(verifiers) == {"grpc"} and tls is None
    claims = verifiers["grpc"].verify(auth.internal_token(tmp_path))
    assert claims == Claims("pageserverapi", None)
    # The internal files are private.
    d = auth.internal_dir(tmp_path)
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert all(oct((d / n).stat().st_mode & 0o777) == "0o600"
               for n in (auth.INTERNAL_PRIVATE, auth.INTERNAL_TOKEN))


def test_health_check_refuses_a_config_that_is_not_there(tmp_path: Path) -> None:
    from pagestore import healthcheck

    assert healthcheck.main(["--config", str(tmp_path / "missing.toml"), "127.0.0.1:1"]) == 2
