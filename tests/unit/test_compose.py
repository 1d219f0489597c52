"""docker-compose.yml and the Dockerfile, validated without a Docker engine: the compose
file against the Compose Specification's JSON schema (check-jsonschema's vendored
compose-spec), then what the schema cannot see: every pagestore service is there, runs a
module that exists, waits for what it needs, and reads a config file that pagestore's
own config loader accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from pagestore.config import load_config
from pagestore.stack import SERVICE_MODULES

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_validation_catches_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    image: 5\n    restart: sometimes\n    bogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(broken)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_every_service_is_wired() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"catalog", "objectstore", "catalog-migrate", *SERVICE_MODULES} <= set(services)
    for name, module in SERVICE_MODULES.items():
        svc = services[name]
        command = svc["command"]
        assert command[:3] == ["python", "-m", module], name
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
        assert svc["build"] == "." and svc["healthcheck"]["test"][0] == "CMD"
        assert svc["depends_on"]["catalog-migrate"]["condition"] == \
            "service_completed_successfully"
        config_path = command[command.index("--config") + 1]
        assert config_path == "/etc/pagestore/pagestore.toml"
    for svc in services.values():
        for dep in svc.get("depends_on", {}):
            assert dep in services
    assert "64000:64000" in services["gateway"]["ports"]


def test_container_config_is_valid_and_addresses_agree() -> None:
    cfg = load_config(ROOT / "docker" / "pagestore.toml")
    compose = _compose()
    # No secret in the image's config: the catalog URL comes from the environment.
    text = (ROOT / "docker" / "pagestore.toml").read_text().lower()
    assert not cfg.catalog.url and "password" not in text and "@catalog" not in text
    env = compose["x-pagestore"]["environment"]
    assert env["PAGESTORE_CATALOG_URL"].startswith("postgresql+psycopg://")
    for name in SERVICE_MODULES:
        host, _, port = cfg.service_addr(name).partition(":")
        assert host == name
        health = compose["services"][name]["healthcheck"]["test"]
        assert health[-1] == f"127.0.0.1:{port}", name
        # The check reads the service's config, so it follows TLS when that is turned on.
        assert health[health.index("--config") + 1] == "/etc/pagestore/pagestore.toml", name
    assert cfg.remote_storage is not None and cfg.remote_storage.kind == "s3"


def test_dockerfile_copies_what_exists() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    for ln in lines:
        if ln.startswith("COPY") and "--from=" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_no_port_is_published_without_auth() -> None:
    """Every port compose publishes on the host checks tokens (docs/security.md), and the
    keys are made before any service starts."""
    cfg = load_config(ROOT / "docker" / "pagestore.toml")
    compose = _compose()
    kinds = {"gateway": [("pg", cfg.gateway.listen_pg_addr), ("grpc", cfg.gateway.listen_addr)],
             "housekeeping": [("http", cfg.housekeeping.listen_http_addr),
                              ("grpc", cfg.housekeeping.listen_addr)]}
    published = {name: svc["ports"] for name, svc in compose["services"].items()
                 if svc.get("ports")}
    assert published, "the compose file publishes the gateway and the management API"
    for name in published:
        assert name in kinds, f"{name} publishes a port: is it authenticated?"
        for port, addr in kinds[name]:
            assert cfg.auth_type(port, addr) == "NeonJWT", (name, port)
    for name in SERVICE_MODULES:
        assert cfg.auth_type("grpc", getattr(cfg, name).listen_addr) == "NeonJWT", name
        assert "auth-init" in compose["services"][name]["depends_on"], name
    assert cfg.auth_validation_public_key_path.startswith("/data/")
