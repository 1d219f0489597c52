"""The local stack through the real `pagestore` command: start, status, tenants and
timelines that survive a restart, stop leaving nothing behind, and refusals."""

from __future__ import annotations

import re

import psycopg
import pytest

from pagestore.catalog import schema
from pagestore.catalog.db import make_engine
from tests.fixtures.stack import StackRunner, processes_mentioning

SERVICES = {"ingest", "pageread", "redo", "housekeeping", "gateway", "catalog"}


def _assert_all_serving(status: dict, external_catalog: bool = False) -> None:
    assert set(status["services"]) == SERVICES
    for name, s in status["services"].items():
        assert s["health"] == "SERVING", (name, s)
        if name == "catalog" and external_catalog:
            assert s["pid"] is None  # a catalog pagestore does not run has no pid of ours
        else:
            assert isinstance(s["pid"], int) and s["pid"] > 0, (name, s)
        assert isinstance(s["port"], int) and s["port"] > 0, (name, s)


def test_start_status_tenants_restart_stop(stack: StackRunner) -> None:
    stack.init()
    assert (stack.workdir / "pagestore.toml").exists()
    stack.start()
    status = stack.status()
    _assert_all_serving(status)
    # the gateway's "port" is its libpq port: a real libpq client completes a handshake
    gw_port = status["services"]["gateway"]["port"]
    with psycopg.connect(host="127.0.0.1", port=gw_port, autocommit=True) as conn:
        conn.execute("set datestyle to iso")

    tenant = stack.run("tenant", "create").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", tenant)
    chosen = "0123456789abcdef0123456789abcdef"
    assert stack.run("tenant", "create", "--tenant-id", chosen).stdout.strip() == chosen
    timeline = stack.run("timeline", "create", "--tenant", tenant).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", timeline)
    assert (stack.workdir / "tenants" / tenant / "timelines" / timeline).is_dir()

    dup = stack.run("tenant", "create", "--tenant-id", chosen, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    missing = stack.run("timeline", "list", "--tenant", "f" * 32, check=False)
    assert missing.returncode == 1 and f"tenant {'f' * 32} not found" in missing.stderr

    stack.run("stop")
    assert not processes_mentioning(str(stack.workdir))
    down = stack.status()
    assert all(s["health"] == "DOWN" for s in down["services"].values())

    stack.start()
    _assert_all_serving(stack.status())
    tenants = [line.split()[0] for line in stack.run("tenant", "list").stdout.splitlines()]
    assert sorted(tenants) == sorted([tenant, chosen])
    timelines = stack.run("timeline", "list", "--tenant", tenant).stdout.split()
    assert timelines[0] == timeline
    assert stack.run("timeline", "list", "--tenant", chosen).stdout == ""


def test_unknown_config_key_rejected(stack: StackRunner) -> None:
    proc = stack.run("init", "-c", "ingest.checkpoint_distanse=5", check=False)
    assert proc.returncode == 2
    assert "unknown config key 'ingest.checkpoint_distanse'" in proc.stderr
    assert not (stack.workdir / "pagestore.toml").exists()
    stack.init()
    proc = stack.run("status", "-c", "gateway.colour='blue'", check=False)
    assert proc.returncode == 2 and "'gateway.colour'" in proc.stderr
    proc = stack.run("start", "-c", "redo.listen_addr=5", check=False)
    assert proc.returncode != 0


def test_start_refuses_catalog_at_older_revision(stack: StackRunner, catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    older, head = schema.all_revisions()[-2], schema.head_revision()
    try:
        schema.upgrade(engine, older)
    finally:
        engine.dispose()
    stack.init(f"catalog.url='{catalog_url}'")
    # The services that use the catalog log the refusal; `start` fails and quotes it.
    stack.allowed_errors.append(r"cannot start: catalog is at revision")
    proc = stack.run("start", check=False)
    assert proc.returncode == 1
    assert f"catalog is at revision {older}; this pagestore needs revision {head}" in proc.stderr
    assert "pagestore catalog upgrade" in proc.stderr
    assert not processes_mentioning(str(stack.workdir))

    out = stack.run("catalog", "upgrade").stdout
    assert f"catalog at revision {head} (was {older})" in out
    stack.start()
    _assert_all_serving(stack.status(), external_catalog=True)


def test_catalog_upgrade_on_private_catalog(stack: StackRunner) -> None:
    stack.init()
    out = stack.run("catalog", "status").stdout
    head = schema.head_revision()
    assert f"current revision: {head}" in out and f"needed revision:  {head}" in out
    # the private catalog was started for the command and stopped after it
    assert not processes_mentioning(str(stack.workdir))


@pytest.mark.parametrize(("query", "sqlstate"), [
    ("hello", "42601"),  # no space: cannot parse query
    ("pagestream_v2 x y", "22023"),  # not a tenant id
    ("pagestream_v2 0123456789abcdef0123456789abcdef", "42601"),  # one parameter
    ("vacuum full", "0A000"),  # not a page service command
])
def test_gateway_refusals_keep_connection(stack: StackRunner, query: str, sqlstate: str) -> None:
    stack.init()
    stack.start()
    port = stack.status()["services"]["gateway"]["port"]
    with psycopg.connect(host="127.0.0.1", port=port, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(query)
        assert exc.value.sqlstate == sqlstate
        conn.execute("set x to y")  # the same connection goes on


# The services outlive the Popen objects of this in-process start, as they outlive the
# `pagestore start` process that usually makes them.
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_a_port_taken_after_its_probe_is_picked_again(stack: StackRunner,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """`pagestore start` picks ports for "port 0" by probing and releasing them; another
    process may bind one before its service does.  That start is stopped and tried again
    with new ports, and the stack serves."""
    import logging
    import socket

    from pagestore import stack as stack_module

    stack.init()
    squatter = socket.create_server(("127.0.0.1", 0))  # binds a port the probe "found"
    squatted = squatter.getsockname()[1]
    real_free_port = stack_module.free_port
    first = iter([squatted])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(first, 0) or real_free_port())
    try:
        with caplog.at_level(logging.WARNING, logger="pagestore.stack"):
            _, started = stack_module.Stack(stack.workdir).start()
    finally:
        squatter.close()
    assert sorted(started) == sorted(stack_module.SERVICES)
    assert "starting again with new ports (attempt 2 of 3)" in caplog.text
    status = stack.status()
    _assert_all_serving(status)
    ports = {s.get("port") for s in status["services"].values()}
    assert squatted not in ports
