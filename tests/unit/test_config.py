from __future__ import annotations

from pathlib import Path

import pytest

from pagestore.config import Config, Duration, config_from_data, load_config, render_config
from pagestore.errors import ConfigError


def test_defaults_render_and_reload(tmp_path: Path) -> None:
    text = render_config(Config())
    path = tmp_path / "pagestore.toml"
    path.write_text(text)
    assert load_config(path) == Config()
    # every key of every section is spelled out
    for key in ("checkpoint_distance", "checkpoint_timeout", "listen_pg_addr", "wait_lsn_timeout",
                "startup_timeout", "url"):
        assert f"\n{key} = " in text


def test_overrides_take_precedence(tmp_path: Path) -> None:
    path = tmp_path / "pagestore.toml"
    path.write_text("[ingest]\ncheckpoint_distance = 1000\ncheckpoint_timeout = '5s'\n")
    cfg = load_config(path, ["ingest.checkpoint_distance=2000", "log.level='debug'",
                             "catalog.url=postgresql+psycopg://u@h:5/db"])
    assert cfg.ingest.checkpoint_distance == 2000
    assert cfg.ingest.checkpoint_timeout == 5.0
    assert cfg.log.level == "debug"
    assert cfg.catalog.url == "postgresql+psycopg://u@h:5/db"


@pytest.mark.parametrize(("override", "key"), [
    ("ingest.checkpoint_distanse=5", "ingest.checkpoint_distanse"),
    ("no_such_section.x=1", "no_such_section"),
    ("bogus=1", "bogus"),
    ("remote_storage={local_path='/x', colour='red'}", "remote_storage.colour"),
])
def test_unknown_key_is_named(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        config_from_data({}, [override])


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "pagestore.toml"
    path.write_text("[pageread]\nwait_lsn_timeot = '1s'\n")
    with pytest.raises(ConfigError, match=r"'pageread\.wait_lsn_timeot'"):
        load_config(path)


@pytest.mark.parametrize(("override", "key"), [
    ("ingest.checkpoint_distance='lots'", "ingest.checkpoint_distance"),
    ("ingest.checkpoint_distance=-1", "ingest.checkpoint_distance"),
    ("ingest.checkpoint_timeout='soon'", "ingest.checkpoint_timeout"),
    ("catalog.port=true", "catalog.port"),
    ("ingest=3", "ingest"),
])
def test_bad_value_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        config_from_data({}, [override])


def test_remote_storage_one_backend() -> None:
    cfg = config_from_data({}, ["remote_storage={local_path='/data/remote'}"])
    assert cfg.remote_storage is not None and cfg.remote_storage.kind == "local"
    cfg = config_from_data({"remote_storage": {"local_path": "/x"}}, [
        "remote_storage={bucket_name='b', bucket_region='eu-north-1', prefix_in_bucket='/p/'}"])
    assert cfg.remote_storage is not None and cfg.remote_storage.kind == "s3"  # replaced, not mixed
    with pytest.raises(ConfigError, match="exactly one of"):
        config_from_data({}, ["remote_storage={local_path='/x', bucket_name='b'}"])
    with pytest.raises(ConfigError, match="bucket_region"):
        config_from_data({}, ["remote_storage={bucket_name='b'}"])
    with pytest.raises(ConfigError, match="does not apply to local"):
        config_from_data({}, ["remote_storage={local_path='/x', prefix_in_bucket='/p'}"])
    rendered = render_config(config_from_data({}, [
        "remote_storage={container_name='c', storage_account='acct', endpoint='http://h:1'}"]))
    assert "[remote_storage]\ncontainer_name = 'c'" in rendered


@pytest.mark.parametrize(("value", "seconds"), [
    ("10s", 10), ("500ms", 0.5), ("5m", 300), ("1h", 3600), (7, 7), ("3", 3), ("1.5s", 1.5)])
def test_duration(value: object, seconds: float) -> None:
    assert Duration.parse(value) == seconds
    assert Duration.parse(Duration.parse(value).to_toml().strip("'")) == seconds


def test_unparseable_override() -> None:
    with pytest.raises(ConfigError, match="cannot parse -c"):
        config_from_data({}, ["just words"])


def test_resolved_ports_are_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 0 becomes a free port; a probe that returns a port already given to another
    service (the kernel may hand a released port out again) is probed again."""
    from pagestore import stack

    probes = iter([5001, 5001, 5002, 5001, 5003])
    monkeypatch.setattr(stack, "free_port", lambda: next(probes))
    taken: set[int] = {5000}
    assert stack._with_port("127.0.0.1:0", taken) == "127.0.0.1:5001"
    assert stack._with_port("127.0.0.1:0", taken) == "127.0.0.1:5002"
    assert stack._with_port("127.0.0.1:0", taken) == "127.0.0.1:5003"
    assert stack._with_port("127.0.0.1:6000", taken) == "127.0.0.1:6000"
    with pytest.raises(stack.StackError, match="port 6000 is configured for two services"):
        stack._with_port("127.0.0.1:6000", taken)


def test_event_loop_choice() -> None:
    import asyncio

    import uvloop

    from pagestore.errors import PagestoreError
    from pagestore.service import _loop_factory

    assert load_config(None, []).event_loop == "uvloop"
    assert _loop_factory("uvloop") is uvloop.new_event_loop
    assert _loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=_loop_factory("uvloop")) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
    with pytest.raises(PagestoreError, match="event_loop must be 'asyncio' or 'uvloop'"):
        _loop_factory("trio")
