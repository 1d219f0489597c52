"""The one config model: ``<workdir>/pagestore.toml`` plus ``-c key=value`` overrides.

Rules:
- TOML through tomllib into frozen dataclasses, one per section.  Precedence: the
  defaults below < the file < ``-c`` overrides, merged before validation.
- A ``-c`` argument is parsed by the same TOML parser (``-c ingest.checkpoint_timeout='5s'``,
  ``-c "remote_storage={local_path='/x'}"``); a value that is not valid TOML is taken as
  a plain string, so ``-c catalog.url=postgresql://...`` works unquoted.
- An unknown key or a value of the wrong type is a ConfigError that names the key.
- ``remote_storage`` is one backend at a time; a ``-c`` override replaces the whole table.
- Secrets are not config: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and
  AZURE_STORAGE_ACCESS_KEY stay in the environment the SDKs read, and catalog.url may
  come from $PAGESTORE_CATALOG_URL when the config leaves it empty (containers).
- No globals: load a Config once (``load_config``) and pass it to constructors.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagestore.errors import ConfigError

CONFIG_FILE_NAME = "pagestore.toml"
WORKDIR_ENV = "PAGESTORE_WORKDIR"
#: catalog.url when the config leaves it empty (it carries the catalog's password).
CATALOG_URL_ENV = "PAGESTORE_CATALOG_URL"
DEFAULT_WORKDIR = ".pagestore"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


class Duration(float):
    """Seconds, written in TOML as a number or a string like '10s', '500ms', '5m', '1h'."""

    __slots__ = ()

    _UNITS: typing.ClassVar[dict[str, float]] = {
        "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
        "d": 86400.0,
    }
    #: The longest duration accepted (100 years): times computed from it stay in range.
    MAX: typing.ClassVar[float] = 100 * 365 * 86400.0
    _RE: typing.ClassVar[re.Pattern[str]] = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as '10s'")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls._bounded(float(value))
        if isinstance(value, str):
            m = cls._RE.match(value)
            if m and (m.group(2) or "s") in cls._UNITS:
                return cls._bounded(float(m.group(1)) * cls._UNITS[m.group(2) or "s"])
        raise ValueError(f"expected a duration such as '10s', '500ms' or '5m', got {value!r}")

    @classmethod
    def _bounded(cls, seconds: float) -> Duration:
        if not seconds <= cls.MAX:  # NaN too
            raise ValueError(f"a duration longer than {int(cls.MAX // 86400)} days is not "
                             "supported")
        return cls(seconds)

    def to_toml(self) -> str:
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
            if self >= seconds and float(self / seconds).is_integer():
                return f"'{int(self / seconds)}{unit}'"
        if self >= 1 and float(self).is_integer():
            return f"'{int(self)}s'"
        return f"'{round(float(self) * 1000)}ms'"


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    url: str = field(default="", metadata=_doc(
        "SQLAlchemy URL of the catalog database (postgresql+psycopg://user:pw@host:port/db).\n"
        "Empty: `pagestore start` runs a private PostgreSQL 15 cluster under <workdir>/catalog."))
    port: int = field(default=55432, metadata=_doc(
        "TCP port of the private catalog cluster on 127.0.0.1 (0: any free port at start)."))


@dataclass(frozen=True, slots=True)
class IngestConfig:
    listen_addr: str = field(default="127.0.0.1:51061", metadata=_doc(
        "gRPC address the ingest service listens on (port 0: any free port at start)."))
    advertise_addr: str = field(default="", metadata=_doc(
        "Address other services use to reach it (empty: listen_addr)."))
    listen_http_addr: str = field(default="127.0.0.1:9891", metadata=_doc(
        "HTTP address of the ingest service's `/metrics` (port 0: any free port at start)."))
    checkpoint_distance: int = field(default=64 * 1024 * 1024, metadata=_doc(
        "Bytes of WAL held in the open in-memory layer before it is frozen and flushed."))
    checkpoint_timeout: Duration = field(default=Duration(10), metadata=_doc(
        "Longest time WAL stays in the open in-memory layer before it is flushed."))


@dataclass(frozen=True, slots=True)
class PageReadConfig:
    listen_addr: str = field(default="127.0.0.1:51051", metadata=_doc(
        "gRPC address of the page-read service (page_api.PageService + PageReadExtras)."))
    advertise_addr: str = field(default="", metadata=_doc(
        "Address other services use to reach it (empty: listen_addr)."))
    listen_http_addr: str = field(default="127.0.0.1:9890", metadata=_doc(
        "HTTP address of the page-read service's `/metrics` (port 0: any free port at\n"
        "start)."))
    wait_lsn_timeout: Duration = field(default=Duration(300), metadata=_doc(
        "How long a read at an LSN not yet ingested waits before it fails."))
    page_cache_pages: int = field(default=16384, metadata=_doc(
        "Redone pages kept in memory (8 KiB each), keyed by the page's newest version; 0\n"
        "turns the cache off."))
    max_tail_bytes: int = field(default=256 * 1024 * 1024, metadata=_doc(
        "Recent WAL (not yet in a layer file) held in memory per timeline; beyond it the "
        "service stops following ingest and reads wait for the next layer file."))
    max_blocks_per_request: int = field(default=1024, metadata=_doc(
        "Blocks one GetPages request may ask for; more is an invalid request."))
    layer_disk_budget: int = field(default=0, metadata=_doc(
        "With remote storage: bytes of layer files kept on local disk; the least recently\n"
        "used uploaded layers beyond it are evicted (read again from remote storage).\n"
        "0: no budget."))
    eviction_period: Duration = field(default=Duration(5), metadata=_doc(
        "How often the local layer files are checked against layer_disk_budget."))
    ranged_reads: bool = field(default=True, metadata=_doc(
        "With remote storage: read a layer that is not on local disk with ranged GETs of\n"
        "the blocks a lookup needs (false: download the whole file first).  Every service\n"
        "that opens layers follows this."))
    download_after_reads: int = field(default=8, metadata=_doc(
        "Ranged GETs of one layer after which it is downloaded whole, in the background."))


@dataclass(frozen=True, slots=True)
class RedoConfig:
    listen_addr: str = field(default="127.0.0.1:51062", metadata=_doc(
        "gRPC address of the WAL redo service."))
    advertise_addr: str = field(default="", metadata=_doc(
        "Address other services use to reach it (empty: listen_addr)."))
    listen_http_addr: str = field(default="127.0.0.1:9892", metadata=_doc(
        "HTTP address of the redo service's `/metrics` (port 0: any free port at start)."))
    processes: int = field(default=0, metadata=_doc(
        "Worker processes that apply redo (Python redo is CPU work under one GIL per\n"
        "process): 0 = one per CPU core, 1 = in the service process only."))
    parallel_min_records: int = field(default=64, metadata=_doc(
        "A batch with fewer WAL records than this is redone in the service process (the\n"
        "hand-off to a worker costs more than it saves); bigger ones are split across the\n"
        "workers."))


@dataclass(frozen=True, slots=True)
class HousekeepingConfig:
    listen_addr: str = field(default="127.0.0.1:51063", metadata=_doc(
        "gRPC address of the housekeeping service (tenants, timelines, compaction, GC)."))
    advertise_addr: str = field(default="", metadata=_doc(
        "Address other services use to reach it (empty: listen_addr)."))
    listen_http_addr: str = field(default="127.0.0.1:9898", metadata=_doc(
        "HTTP address of the management API (/v1/...) and housekeeping's `/metrics`\n"
        "(port 0: any free port at start)."))
    upload_period: Duration = field(default=Duration(1), metadata=_doc(
        "With remote storage: how often new layers and indexes are looked for and uploaded."))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen_pg_addr: str = field(default="127.0.0.1:64000", metadata=_doc(
        "libpq address computes connect to (Neon's page service protocol)."))
    listen_addr: str = field(default="127.0.0.1:51064", metadata=_doc(
        "gRPC address of the gateway's health service."))
    advertise_addr: str = field(default="", metadata=_doc(
        "Address other services use to reach its gRPC port (empty: listen_addr)."))
    listen_http_addr: str = field(default="127.0.0.1:9893", metadata=_doc(
        "HTTP address of the gateway's `/metrics` (port 0: any free port at start)."))
    max_connections: int = field(default=256, metadata=_doc(
        "libpq connections served at once; one more is refused (SQLSTATE 53300)."))


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """Per-tenant settings (Neon's TenantConfig names and defaults): these are the
    server-wide defaults; `pagestore tenant config` overrides them for one tenant."""

    compaction_period: Duration = field(default=Duration(20), metadata=_doc(
        "How often housekeeping looks for compaction and image layer work (0: never)."))
    compaction_threshold: int = field(default=10, metadata=_doc(
        "L0 delta layers that trigger a compaction into L1 layers."))
    compaction_target_size: int = field(default=128 * 1024 * 1024, metadata=_doc(
        "Bytes of values per L1 delta layer, and of pages per image layer partition."))
    image_creation_threshold: int = field(default=3, metadata=_doc(
        "Delta layers above a key partition's newest image that make it get a new one."))
    gc_period: Duration = field(default=Duration(3600), metadata=_doc(
        "How often housekeeping runs garbage collection (0: never)."))
    gc_horizon: int = field(default=64 * 1024 * 1024, metadata=_doc(
        "Bytes of WAL history below the last record that GC always keeps."))
    pitr_interval: Duration = field(default=Duration(7 * 86400), metadata=_doc(
        "History GC keeps by time: reads back to now - pitr_interval keep working.\n"
        "The GC cutoff is the lower of this and gc_horizon (0: gc_horizon alone)."))
    lsn_lease_length: Duration = field(default=Duration(600), metadata=_doc(
        "How long an LSN lease (`lease lsn`, LeaseLsn) holds GC back at its LSN."))


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = field(default="info", metadata=_doc(
        "Log level of every service: debug, info, warning or error."))


@dataclass(frozen=True, slots=True)
class RemoteStorageConfig:
    """One backend: local_path, or an S3 bucket, or an Azure container."""

    local_path: str = ""
    bucket_name: str = ""
    bucket_region: str = ""
    prefix_in_bucket: str = ""
    container_name: str = ""
    storage_account: str = ""
    container_region: str = ""
    prefix_in_container: str = ""
    endpoint: str = ""

    @property
    def kind(self) -> str:
        if self.local_path:
            return "local"
        if self.bucket_name:
            return "s3"
        return "azure"


_REMOTE_KEYS = {
    "local": {"local_path"},
    "s3": {"bucket_name", "bucket_region", "prefix_in_bucket", "endpoint"},
    "azure": {"container_name", "storage_account", "container_region",
              "prefix_in_container", "endpoint"},
}


@dataclass(frozen=True, slots=True)
class Config:
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pageread: PageReadConfig = field(default_factory=PageReadConfig)
    redo: RedoConfig = field(default_factory=RedoConfig)
    housekeeping: HousekeepingConfig = field(default_factory=HousekeepingConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tenant: TenantConfig = field(default_factory=TenantConfig)
    log: LogConfig = field(default_factory=LogConfig)
    pg_bin_dir: str = field(default="", metadata=_doc(
        "Directory of the PostgreSQL 15 binaries (initdb, postgres, pg_ctl).\n"
        "Empty: found with pg_config, else /usr/lib/postgresql/15/bin."))
    startup_timeout: Duration = field(default=Duration(60), metadata=_doc(
        "How long `pagestore start` waits for each service to report SERVING."))
    shutdown_timeout: Duration = field(default=Duration(20), metadata=_doc(
        "How long `pagestore stop` waits for a service before it is killed."))
    node_id: int = field(default=1, metadata=_doc(
        "This node's id, as the management API reports it (GET /v1/status)."))
    event_loop: str = field(default="uvloop", metadata=_doc(
        "The services' event loop: 'uvloop' (libuv's) or 'asyncio' (the standard\n"
        "library's). docs/performance.md has the measurements."))
    auth_validation_public_key_path: str = field(default="", metadata=_doc(
        "Ed25519 public key (PEM) that verifies JWTs, or a directory of them (every key\n"
        "in it is accepted: add the new key, move clients, remove the old one).\n"
        "docs/security.md."))
    pg_auth_type: str = field(default="", metadata=_doc(
        "The gateway's libpq port: 'Trust' or 'NeonJWT' (the token as the password).\n"
        "Empty: Trust on a loopback address, NeonJWT on any other."))
    http_auth_type: str = field(default="", metadata=_doc(
        "The management API: 'Trust' or 'NeonJWT' (Authorization: Bearer). Empty: Trust\n"
        "on a loopback address, NeonJWT on any other. /metrics and /v1/status stay open."))
    grpc_auth_type: str = field(default="", metadata=_doc(
        "Every gRPC port: 'Trust' or 'NeonJWT' (authorization: Bearer metadata; the\n"
        "services use a token the stack makes at start). Empty: Trust on a loopback\n"
        "address, NeonJWT on any other."))
    ssl_cert_file: str = field(default="", metadata=_doc(
        "TLS certificate (PEM) of the gRPC ports and the gateway's libpq port; with\n"
        "ssl_key_file set too, they serve TLS only."))
    ssl_key_file: str = field(default="", metadata=_doc(
        "The private key (PEM) of ssl_cert_file."))
    ssl_ca_file: str = field(default="", metadata=_doc(
        "What the services and the CLI trust when they connect to a TLS port (PEM).\n"
        "Empty: ssl_cert_file itself (a self-signed certificate)."))
    remote_storage: RemoteStorageConfig | None = None

    @property
    def tls(self) -> bool:
        """Whether the gRPC and libpq ports serve TLS."""
        return bool(self.ssl_cert_file and self.ssl_key_file)

    def auth_type(self, port: str, listen_addr: str) -> str:
        """'Trust' or 'NeonJWT' for ``port`` ('pg', 'http' or 'grpc') listening on
        ``listen_addr`` (an empty setting: Trust on loopback only)."""
        value: str = getattr(self, f"{port}_auth_type")
        if value:
            return value
        host = listen_addr.rpartition(":")[0].strip("[]")
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        return "Trust" if loopback else "NeonJWT"

    def service_addr(self, service: str) -> str:
        """The address other services dial to reach ``service``."""
        section: ServiceSection = getattr(self, service)
        return section.advertise_addr or section.listen_addr


SERVICE_SECTIONS = ("ingest", "pageread", "redo", "housekeeping", "gateway")
ServiceSection = IngestConfig | PageReadConfig | RedoConfig | HousekeepingConfig | GatewayConfig


# --------------------------------------------------------------------------- parsing

def _type_name(tp: object) -> str:
    names: dict[object, str] = {int: "an integer", str: "a string", bool: "a boolean",
                                Duration: "a duration", float: "a number"}
    return names.get(tp, str(tp))


def _convert(key: str, tp: object, value: object) -> object:
    if tp is Duration:
        try:
            return Duration.parse(value)
        except ValueError as e:
            raise ConfigError(f"config key '{key}': {e}") from None
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"config key '{key}': must not be negative, got {value}")
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(f"unknown config key '{prefix}{k}'")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if f.name == "remote_storage":
            kwargs[f.name] = _build_remote(value, key)
        elif dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{key}': expected a table, got {value!r}")
            kwargs[f.name] = _build(tp, value, key + ".")  # type: ignore[arg-type]
        else:
            kwargs[f.name] = _convert(key, tp, value)
    return cls(**kwargs)


def _build_remote(value: object, key: str) -> RemoteStorageConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key '{key}': expected a table, got {value!r}")
    rs: RemoteStorageConfig = _build(RemoteStorageConfig, value, key + ".")
    chosen = [k for k in ("local_path", "bucket_name", "container_name") if value.get(k)]
    if len(chosen) != 1:
        raise ConfigError(
            f"config key '{key}': give exactly one of local_path, bucket_name or "
            f"container_name (got {', '.join(chosen) or 'none'})")
    allowed = _REMOTE_KEYS[rs.kind]
    for k, v in value.items():
        if v and k not in allowed:
            raise ConfigError(f"config key '{key}.{k}' does not apply to {rs.kind} remote storage")
    if rs.kind == "s3" and not rs.bucket_region:
        raise ConfigError(f"config key '{key}.bucket_region' is required with bucket_name")
    if rs.kind == "azure" and not rs.storage_account:
        raise ConfigError(f"config key '{key}.storage_account' is required with container_name")
    return rs


def tenant_settings(defaults: TenantConfig, overrides: Mapping[str, Any]) -> TenantConfig:
    """A tenant's effective settings: the server-wide defaults with its overrides (as the
    catalog stores them), validated."""
    cfg: TenantConfig = _build(TenantConfig, {
        **{f.name: getattr(defaults, f.name) for f in dataclasses.fields(TenantConfig)},
        **overrides}, "tenant.")
    return cfg


def parse_tenant_setting(arg: str) -> tuple[str, object]:
    """``KEY=VALUE`` of `pagestore tenant config`: the key checked, the value parsed as a
    TOML value (or taken as a string) and validated; ConfigError names a bad key."""
    key, sep, text = arg.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"cannot parse {arg!r}: expected KEY=VALUE, e.g. pitr_interval='1h'")
    names = {f.name for f in dataclasses.fields(TenantConfig)}
    if key not in names:
        raise ConfigError(f"unknown tenant setting '{key}' (known: {', '.join(sorted(names))})")
    try:
        value: object = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    _convert(f"tenant.{key}", typing.get_type_hints(TenantConfig)[key], value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return key, value


def parse_override(arg: str) -> dict[str, Any]:
    """Parse one ``-c key=value`` argument into a nested dict."""
    try:
        return tomllib.loads(arg)
    except tomllib.TOMLDecodeError:
        pass
    key, sep, value = arg.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise ConfigError(f"cannot parse -c {arg!r}: expected key=value, e.g. log.level='debug'")
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value.strip()
    return nested


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if k == "remote_storage":
            out[k] = v  # one backend at a time: replace, never mix
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def config_from_data(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    merged = dict(data)
    for arg in overrides:
        merged = _merge(merged, parse_override(arg))
    cfg: Config = _build(Config, merged, "")
    for port in ("pg", "http", "grpc"):
        if getattr(cfg, f"{port}_auth_type") not in ("", "Trust", "NeonJWT"):
            raise ConfigError(f"{port}_auth_type must be 'Trust' or 'NeonJWT' (or empty: "
                              f"Trust on loopback), not {getattr(cfg, f'{port}_auth_type')!r}")
    if bool(cfg.ssl_cert_file) != bool(cfg.ssl_key_file):
        raise ConfigError("ssl_cert_file and ssl_key_file go together: set both for TLS")
    return cfg


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (if it exists) and apply ``overrides``; validate everything."""
    data: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"cannot parse {path}: {e}") from None
    cfg = config_from_data(data, overrides)
    url = os.environ.get(CATALOG_URL_ENV)
    if url and not cfg.catalog.url:  # a secret: from the environment (containers)
        cfg = dataclasses.replace(cfg, catalog=dataclasses.replace(cfg.catalog, url=url))
    return cfg


def resolve_workdir(arg: str | None) -> Path:
    """``--workdir``, else $PAGESTORE_WORKDIR, else ./.pagestore; always absolute."""
    raw = arg or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    return Path(raw).expanduser().resolve()


# --------------------------------------------------------------------------- rendering

def _toml_value(value: object) -> str:
    if isinstance(value, Duration):
        return value.to_toml()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value + "'" if "'" not in value and "\n" not in value else repr(value)
    raise TypeError(f"cannot render {value!r}")


def _render_fields(obj: object, out: list[str]) -> None:
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) or f.name == "remote_storage":
            continue
        for line in f.metadata.get("doc", "").splitlines():
            out.append(f"# {line}")
        out.append(f"{f.name} = {_toml_value(value)}")


def render_config(cfg: Config) -> str:
    """The config as TOML with every key spelled out and documented."""
    out = ["# pagestore configuration: every key with its value; edit and restart.",
           "# Any key can be overridden on the command line: -c section.key=value", ""]
    _render_fields(cfg, out)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, RemoteStorageConfig):
            out += ["", f"[{f.name}]"]
            _render_fields(value, out)
    out += ["", "# Remote storage is off unless this table is present; one backend at a time:"]
    rs = cfg.remote_storage
    if rs is None:
        out += ["# [remote_storage]", "# local_path = '/some/local/path/'", "#",
                "# [remote_storage]", "# bucket_name = 'b'", "# bucket_region = 'eu-north-1'",
                "# prefix_in_bucket = '/p/'", "# endpoint = 'http://127.0.0.1:5000'",
                "#", "# [remote_storage]", "# container_name = 'c'",
                "# storage_account = 'acct'", "# container_region = 'us-east'",
                "# prefix_in_container = '/p/'"]
    else:
        out.append("[remote_storage]")
        for f in dataclasses.fields(rs):
            v = getattr(rs, f.name)
            if v:
                out.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(out) + "\n"
