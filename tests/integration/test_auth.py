"""Issue 15: every port refuses what it must and serves the right token.

A stack with NeonJWT on its libpq, HTTP and gRPC ports, verifying with a directory of
public keys.  For each port: no token, an expired token, one signed by an unknown key,
one for another tenant and one of a wrong scope are refused with the port's own clear
error (libpq SQLSTATE 28P01/28000, gRPC UNAUTHENTICATED/PERMISSION_DENIED, HTTP
401/403) and nothing is served; the right token works; a rotated key set keeps old
tokens valid until their key is removed.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from typing import TYPE_CHECKING

import grpc
import pytest
import requests

from pagestore.auth import generate_keypair, load_private_key, make_token
from pagestore.ids import TenantId
from pagestore.lsn import Lsn
from pagestore.proto import housekeeping_pb2, housekeeping_pb2_grpc, page_service_pb2_grpc
from pagestore.proto import page_service_pb2 as pb
from tests.fixtures.util import wait_until
from tests.integration.test_gateway import PgError, RawClient, v2_rel_request
from tests.integration.test_ingest_service import attach, caught_up

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.stack import StackRunner

AUTH = ("pg_auth_type='NeonJWT'", "http_auth_type='NeonJWT'", "grpc_auth_type='NeonJWT'")


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


def test_every_port_refuses_and_serves(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    keys = work_dir / "keys"
    old_private = work_dir / "old.pem"
    generate_keypair(old_private, keys / "old.pub")
    generate_keypair(work_dir / "stranger.pem", work_dir / "stranger.pub")  # not in keys/
    old_key = load_private_key(old_private)
    stranger = load_private_key(work_dir / "stranger.pem")
    primary = pg_factory()
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    stack.auth = False  # this test sets its own
    stack.init(*AUTH, f"auth_validation_public_key_path='{keys}'")
    stack.start()
    st = stack.status()["services"]
    assert all(s["health"] == "SERVING" for s in st.values())  # health stays open
    # The CLI acts with the stack's own token (run/auth), as the operator beside it.
    tenant, timeline = attach(stack, primary)
    other = TenantId.generate()
    lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, lsn), timeout=120, what="caught up")

    good = make_token(old_key, "tenant", TenantId.parse(tenant), ttl=600)
    admin = make_token(old_key, "pageserverapi")
    refusals = {
        "none": (None, "missing token", "UNAUTHENTICATED", 401, "28P01"),
        "expired": (make_token(old_key, "tenant", TenantId.parse(tenant), ttl=-60), "expired",
                    "UNAUTHENTICATED", 401, "28P01"),
        "unknown key": (make_token(stranger, "pageserverapi"), "no key verifies",
                        "UNAUTHENTICATED", 401, "28P01"),
        "other tenant": (make_token(old_key, "tenant", other), f"for tenant {other}",
                         "PERMISSION_DENIED", 403, "28000"),
        "wrong scope": (make_token(old_key, "safekeeperdata"), "ineligible",
                        "PERMISSION_DENIED", 403, "28000"),
    }

    # ---- gRPC page_api (pageread): GetRelSize of a relation that exists.
    ch = grpc.insecure_channel(f"127.0.0.1:{st['pageread']['port']}")
    pages = page_service_pb2_grpc.PageServiceStub(ch)
    rel = pb.RelTag(spc_oid=1663, db_oid=5, rel_number=1259, fork_number=0)  # pg_class
    md = (("neon-tenant-id", tenant), ("neon-timeline-id", timeline), ("neon-shard-id", "0000"))

    def rel_size(token: str | None) -> int:
        return pages.GetRelSize(pb.GetRelSizeRequest(read_lsn=pb.ReadLsn(request_lsn=int(lsn)),
                                                     rel=rel), metadata=md + bearer(token),
                                timeout=30).num_blocks

    for what, (token, message, code, _, _) in refusals.items():
        with pytest.raises(grpc.RpcError) as e:
            rel_size(token)
        assert e.value.code().name == code and message in e.value.details(), (what, e.value)
    assert rel_size(good) > 0 and rel_size(admin) == rel_size(good)

    # ---- gRPC internal service (housekeeping): pageserverapi only.
    hch = grpc.insecure_channel(f"127.0.0.1:{st['housekeeping']['port']}")
    hk = housekeeping_pb2_grpc.HousekeepingStub(hch)
    for token, code in ((None, "UNAUTHENTICATED"), (good, "PERMISSION_DENIED")):
        with pytest.raises(grpc.RpcError) as e:
            hk.ListTenants(housekeeping_pb2.ListTenantsRequest(), metadata=bearer(token),
                           timeout=30)
        assert e.value.code().name == code
    listed = hk.ListTenants(housekeeping_pb2.ListTenantsRequest(), metadata=bearer(admin),
                            timeout=30)
    assert tenant in {t.tenant_id for t in listed.tenants}

    # ---- HTTP management API
    base = f"http://127.0.0.1:{st['housekeeping']['http_port']}"
    one = f"{base}/v1/tenant/{tenant}/timeline/{timeline}"
    for what, (token, message, _, status, _) in refusals.items():
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        r = requests.get(one, headers=headers, timeout=30)
        assert r.status_code == status and message in r.json()["msg"], (what, r.text)
    assert requests.get(one, headers={"Authorization": f"Bearer {good}"},
                        timeout=30).json()["timeline_id"] == timeline
    # Server-wide routes need pageserverapi; a tenant's settings need its own token.
    r = requests.get(f"{base}/v1/tenant", headers={"Authorization": f"Bearer {good}"},
                     timeout=30)
    assert r.status_code == 403
    r = requests.patch(f"{base}/v1/tenant/config", json={"tenant_id": str(other), "gc_horizon": 1},
                       headers={"Authorization": f"Bearer {good}"}, timeout=30)
    assert r.status_code == 403
    r = requests.patch(f"{base}/v1/tenant/config", json={"tenant_id": tenant, "gc_horizon": 4096},
                       headers={"Authorization": f"Bearer {good}"}, timeout=30)
    assert r.status_code == 200 and r.json()["tenant_specific_overrides"] == {"gc_horizon": 4096}
    assert requests.get(f"{base}/v1/tenant", headers={"Authorization": f"Bearer {admin}"},
                        timeout=30).status_code == 200
    for open_path in ("/v1/status", "/metrics", "/swagger.yml"):
        assert requests.get(base + open_path, timeout=30).status_code == 200, open_path

    # ---- libpq (the gateway): the token is the password.
    port = st["gateway"]["port"]
    rel_req = v2_rel_request(1, int(lsn), (1663, 5, 1259, 0))
    for what, (token, message, _, _, sqlstate) in refusals.items():
        if sqlstate == "28000":
            continue  # valid tokens: refused per command, below
        with pytest.raises(PgError) as pe:
            RawClient(port, password=token or "")
        assert pe.value.fields["C"] == "28P01" and message in pe.value.fields["M"], what
    for what in ("other tenant", "wrong scope"):
        token = refusals[what][0]
        assert token is not None
        c = RawClient(port, password=token)
        try:
            with pytest.raises(PgError) as pe:
                c.query(f"pagestream_v2 {tenant} {timeline}")
            assert pe.value.fields["C"] == "28000", (what, pe.value.fields)
            with pytest.raises(PgError) as pe:
                c.query(f"basebackup {tenant} {timeline}")
            assert pe.value.fields["C"] == "28000"
            with pytest.raises(PgError) as pe:
                c.query(f"lease lsn {tenant} {timeline} {lsn}")
            assert pe.value.fields["C"] == "28000"
        finally:
            c.close()
    c = RawClient(port, password=good)
    try:
        c.start_pagestream(2, tenant, timeline)
        nb = c.pipelined([rel_req])[0]
        assert nb[0] == 101 and struct.unpack("!I", nb[1:])[0] > 0
    finally:
        c.close()

    # ---- rotation: a new key beside the old one; old tokens work until it goes.
    new_private = work_dir / "new.pem"
    generate_keypair(new_private, keys / "new.pub")
    fresh = make_token(load_private_key(new_private), "tenant", TenantId.parse(tenant))
    wait_until(lambda: _works(rel_size, fresh), timeout=30, what="the new key accepted")
    assert rel_size(good) > 0  # the old key's token still works
    os.unlink(keys / "old.pub")
    wait_until(lambda: not _works(rel_size, good), timeout=30, what="the old key dropped")
    assert rel_size(fresh) > 0
    ch.close()
    hch.close()


def _works(call, token: str) -> bool:
    try:
        call(token)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        return False
    return True


def self_signed(work_dir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pagestore-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = work_dir / "tls.crt", work_dir / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_on_grpc_and_the_gateway(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    import psycopg

    cert, key = self_signed(work_dir)
    primary = pg_factory()
    stack.init(f"ssl_cert_file='{cert}'", f"ssl_key_file='{key}'")
    stack.start()
    st = stack.status()["services"]
    assert all(s["health"] == "SERVING" for s in st.values()), st  # health over TLS
    tenant, timeline = attach(stack, primary)  # the CLI and the services speak TLS
    lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, lsn), timeout=120, what="caught up")

    # gRPC: a client that trusts the certificate is served; a plaintext one is not.
    md = (("neon-tenant-id", tenant), ("neon-timeline-id", timeline), ("neon-shard-id", "0000"),
          *bearer(os.environ.get("PAGESTORE_AUTH_TOKEN")))
    req = pb.GetRelSizeRequest(read_lsn=pb.ReadLsn(request_lsn=int(lsn)), rel=pb.RelTag(
        spc_oid=1663, db_oid=5, rel_number=1259, fork_number=0))
    addr = f"127.0.0.1:{st['pageread']['port']}"
    with grpc.secure_channel(addr, grpc.ssl_channel_credentials(cert.read_bytes())) as ch:
        assert page_service_pb2_grpc.PageServiceStub(ch).GetRelSize(
            req, metadata=md, timeout=30).num_blocks > 0
    with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as e:
        page_service_pb2_grpc.PageServiceStub(ch).GetRelSize(req, metadata=md, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # The container health check speaks TLS when given the config (and fails without it).
    health = [sys.executable, "-m", "pagestore.healthcheck"]
    ok = subprocess.run([*health, "--config", str(stack.workdir / "pagestore.toml"), addr],
                        capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
    plain = subprocess.run([*health, addr], capture_output=True, text=True, timeout=60)
    assert (plain.returncode, plain.stdout.strip()) == (1, "DOWN")

    # libpq: sslmode=require is served over TLS; a plaintext startup is refused.
    port = st["gateway"]["port"]
    params = {"host": "127.0.0.1", "port": port, "user": "test", "dbname": "postgres",
              "password": os.environ.get("PGPASSWORD", "")}
    with psycopg.connect(**params, sslmode="verify-ca", sslrootcert=str(cert),
                         autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        cur = conn.execute(f"lease lsn {tenant} {timeline} {lsn}")
        assert cur.fetchone() is not None
    with pytest.raises(psycopg.OperationalError, match="must connect with TLS"):
        psycopg.connect(**params, sslmode="disable").close()
    stack.allowed_errors.append("protocol error")
