"""Issue 14: the management API (every route, against the real stack) and /metrics.

One stack with remote storage (a local directory: attach and detach need it) and a real
PostgreSQL primary under pgbench.  Each route is called with good input and with the
caller's mistakes (4xx with a JSON message, never a 500); /metrics of every service
parses with prometheus_client's parser and its named series move when work happens.
The schemathesis run (test_management_api_fuzz.py) checks every answer against
docs/openapi.yaml.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pagestore.lsn import Lsn
from pagestore.proto import page_service_pb2 as pb
from tests.fixtures.standby import PageApiClient
from tests.fixtures.util import wait_until
from tests.integration.test_fullbackup_gateway import pgbench
from tests.integration.test_gateway import RawClient, v2_get_page

if TYPE_CHECKING:
    from tests.fixtures.stack import StackRunner

SERVICES = ("ingest", "pageread", "redo", "housekeeping", "gateway")
SETTINGS = ("ingest.checkpoint_distance=1048576", "ingest.checkpoint_timeout='60s'",
            "tenant.compaction_period='0s'", "tenant.gc_period='0s'",
            "tenant.compaction_threshold=2", "pageread.page_cache_pages=0")


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, expect: int, **kw: Any) -> Any:
        token = os.environ.get("PAGESTORE_AUTH_TOKEN")  # a stack with auth on
        if token:
            kw.setdefault("headers", {})["Authorization"] = f"Bearer {token}"
        r = requests.request(method, self.base + path, timeout=300, **kw)
        assert r.status_code == expect, (method, path, r.status_code, r.text)
        assert r.headers.get("PAGESERVER_LAUNCH_TIMESTAMP"), r.headers
        if r.headers.get("Content-Type", "").startswith("application/json"):
            body = r.json()
            if expect >= 400:
                assert set(body) == {"msg"} and body["msg"], body
            return body
        return r.text

    def error(self, method: str, path: str, expect: int, **kw: Any) -> str:
        msg: str = self.call(method, path, expect, **kw)["msg"]
        return msg


def scrape(stack: StackRunner, service: str) -> dict[str, float]:
    """Every sample of a service's /metrics, by name and labels."""
    port = stack.status()["services"][service]["http_port"]
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def test_every_route_and_metrics(stack: StackRunner, pg_factory, remote_storage) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'1GB'", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "2")
    stack.init(*SETTINGS, remote_storage("local").override())
    stack.start()
    st = stack.status()["services"]
    api = Api(st["housekeeping"]["http_port"])
    assert len({s["http_port"] for s in st.values() if "http_port" in s}) == len(SERVICES)

    # ---- server
    assert api.call("GET", "/v1/status", 200) == {"id": 1}
    spec = yaml.safe_load(api.call("GET", "/swagger.yml", 200))
    assert spec["openapi"].startswith("3.") and "/v1/tenant/{tenant_id}/timeline" in spec["paths"]
    assert "no such" not in api.error("GET", "/v1/nonexistent", 404)
    api.error("DELETE", "/v1/status", 405)

    # ---- tenants
    tenant = api.call("POST", "/v1/tenant", 201, json={"gc_horizon": 4096})
    assert len(tenant) == 32
    assert "gc_horizon" in api.error("POST", "/v1/tenant", 400, json={"gc_horizon": "lots"})
    assert "unknown field" in api.error("POST", "/v1/tenant", 400, json={"colour": "red"})
    assert "not valid JSON" in api.error("POST", "/v1/tenant", 400, data=b"{nope")
    named = "ab" * 16
    assert api.call("POST", "/v1/tenant", 201, json={"new_tenant_id": named}) == named
    assert "exists" in api.error("POST", "/v1/tenant", 409, json={"new_tenant_id": named})
    listed = {t["id"]: t for t in api.call("GET", "/v1/tenant", 200)}
    assert {tenant, named} <= set(listed)
    assert listed[tenant]["state"]["slug"] == "Active" and listed[tenant]["generation"] >= 1
    assert api.call("GET", f"/v1/tenant/{tenant}", 200)["timelines"] == []
    assert "tenant_id" in api.error("GET", "/v1/tenant/not-an-id", 400)
    api.error("GET", f"/v1/tenant/{'cd' * 16}", 404)

    cfg = api.call("GET", f"/v1/tenant/{tenant}/config", 200)
    assert cfg["tenant_specific_overrides"] == {"gc_horizon": 4096}
    assert cfg["effective_config"]["gc_horizon"] == 4096
    cfg = api.call("PATCH", "/v1/tenant/config", 200,
                   json={"tenant_id": tenant, "pitr_interval": "1h", "gc_horizon": None})
    assert cfg["tenant_specific_overrides"] == {"pitr_interval": "1h"}
    assert cfg["effective_config"]["pitr_interval"] == "1h"
    cfg = api.call("PUT", "/v1/tenant/config", 200,
                   json={"tenant_id": tenant, "lsn_lease_length": "2m"})
    assert cfg["tenant_specific_overrides"] == {"lsn_lease_length": "2m"}  # PUT replaces
    assert "unknown field" in api.error("PUT", "/v1/tenant/config", 400,
                                        json={"tenant_id": tenant, "gc_horizn": 1})
    assert "tenant_id" in api.error("PATCH", "/v1/tenant/config", 400, json={"gc_horizon": 1})
    api.error("PATCH", "/v1/tenant/config", 404, json={"tenant_id": "ef" * 16})

    # ---- timelines
    timeline = "01" * 16
    source = f"host=127.0.0.1 port={primary.port} user={primary.user}"
    tl = api.call("POST", f"/v1/tenant/{tenant}/timeline", 201,
                  json={"new_timeline_id": timeline, "wal_source": source, "pg_version": 15})
    assert tl["timeline_id"] == timeline and tl["state"] == "Active"
    assert tl["wal_source_connstr"].startswith("host=127.0.0.1")
    # The same create again: 201 (idempotent); other parameters: 409.
    api.call("POST", f"/v1/tenant/{tenant}/timeline", 201,
             json={"new_timeline_id": timeline, "wal_source": source})
    api.error("POST", f"/v1/tenant/{tenant}/timeline", 409,
              json={"new_timeline_id": timeline, "ancestor_timeline_id": "02" * 16})
    assert "new_timeline_id" in api.error("POST", f"/v1/tenant/{tenant}/timeline", 400,
                                          json={"wal_source": source})
    assert "pg_version" in api.error("POST", f"/v1/tenant/{tenant}/timeline", 400,
                                     json={"new_timeline_id": "03" * 16, "pg_version": 14})
    assert "ancestor_start_lsn" in api.error(
        "POST", f"/v1/tenant/{tenant}/timeline", 400,
        json={"new_timeline_id": "03" * 16, "ancestor_timeline_id": timeline,
              "ancestor_start_lsn": "garbage"})
    assert [t["timeline_id"] for t in api.call("GET", f"/v1/tenant/{tenant}/timeline", 200)] \
        == [timeline]
    assert api.call("GET", f"/v1/tenant/{tenant}", 200)["timelines"] == [timeline]

    pgbench(primary, "-t", "300", "-c", "2")
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    one = f"/v1/tenant/{tenant}/timeline/{timeline}"
    wait_until(lambda: Lsn.parse(api.call("GET", one, 200)["last_record_lsn"]) >= end,
               timeout=120, what=f"ingest past {end}")
    # checkpoint: the in-memory WAL (checkpoint_timeout is 60 s) goes to a layer file.
    api.call("PUT", one + "/checkpoint?compact=false", 200)
    detail = api.call("GET", one, 200)
    assert Lsn.parse(detail["disk_consistent_lsn"]) >= end
    for key in ("last_record_lsn", "prev_record_lsn", "applied_gc_cutoff_lsn", "min_readable_lsn",
                "disk_consistent_lsn", "remote_consistent_lsn"):
        Lsn.parse(detail[key])
    kinds = {s["kind"]: s for s in detail["layers"]}
    assert kinds["l0"]["count"] >= 2 and detail["current_physical_size"] == sum(
        s["bytes"] for s in detail["layers"])
    assert detail["replication_slot"]["status"] == "present"
    accounts = int(primary.psql("SELECT pg_relation_size('pgbench_accounts')"))
    assert detail["current_logical_size"] % 8192 == 0
    assert accounts < detail["current_logical_size"] < 20 * accounts
    assert detail["walreceiver_status"] == "streaming"

    # compaction (threshold 2) and GC
    assert api.call("PUT", one + "/compact?force_image_layer_creation=true", 200) is None
    after = {s["kind"]: s["count"] for s in api.call("GET", one, 200)["layers"]}
    assert after["l0"] == 0 and after["l1"] >= 1 and after["image"] >= 1, after
    gc = api.call("PUT", one + "/do_gc", 200, json={"gc_horizon": None})
    assert gc["layers_total"] >= after["l1"] + after["image"] and gc["elapsed"] >= 0
    assert "gc_horizon" in api.error("PUT", one + "/do_gc", 400, json={"gc_horizon": 5})

    # branch, lease, timestamps
    branch_at = Lsn.parse(api.call("GET", one, 200)["last_record_lsn"])
    branch = "04" * 16
    b = api.call("POST", f"/v1/tenant/{tenant}/timeline", 201, json={
        "new_timeline_id": branch, "ancestor_timeline_id": timeline,
        "ancestor_start_lsn": str(branch_at)})
    assert b["ancestor_timeline_id"] == timeline
    assert Lsn.parse(b["ancestor_lsn"]) == (int(branch_at) + 7) & ~7
    far = str(Lsn(int(branch_at) + (1 << 32)))
    assert "beyond" in api.error("POST", f"/v1/tenant/{tenant}/timeline", 406, json={
        "new_timeline_id": "05" * 16, "ancestor_timeline_id": timeline,
        "ancestor_start_lsn": far})
    lease = api.call("POST", one + "/lsn_lease", 200, json={"lsn": str(branch_at)})
    until = datetime.datetime.fromisoformat(lease["valid_until"].replace("Z", "+00:00"))
    assert datetime.timedelta(seconds=60) < until - datetime.datetime.now(datetime.UTC) \
        <= datetime.timedelta(seconds=121)  # the tenant's lsn_lease_length, 2m
    assert "lsn" in api.error("POST", one + "/lsn_lease", 400, json={"lsn": 5})

    commit_ts = api.call("GET", one + f"/get_timestamp_of_lsn?lsn={end}", 200)
    when = datetime.datetime.fromisoformat(commit_ts.replace("Z", "+00:00"))
    assert abs(when - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=10)
    found = api.call("GET", one + "/get_lsn_by_timestamp?timestamp="
                     + requests.utils.quote(commit_ts) + "&with_lease=true", 200)
    assert found["kind"] in ("present", "future") and "valid_until" in found
    assert Lsn.parse(found["lsn"]) <= Lsn.parse(api.call("GET", one, 200)["last_record_lsn"])
    past = api.call("GET", one + "/get_lsn_by_timestamp?timestamp=2001-01-01T00:00:00Z", 200)
    assert past["kind"] == "past"
    assert "timestamp" in api.error("GET", one + "/get_lsn_by_timestamp?timestamp=yesterday", 400)
    assert "time zone" in api.error(
        "GET", one + "/get_lsn_by_timestamp?timestamp=2026-01-01T00:00:00", 400)
    assert "lsn" in api.error("GET", one + "/get_timestamp_of_lsn?lsn=zz", 400)
    api.error("GET", f"/v1/tenant/{tenant}/timeline/{'06' * 16}", 404)

    # ---- /metrics: every service's parses; the named series move with work.
    before = {s: scrape(stack, s) for s in SERVICES}
    pgbench(primary, "-t", "100")
    end2 = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    wait_until(lambda: Lsn.parse(api.call("GET", one, 200)["last_record_lsn"]) >= end2,
               timeout=120, what=f"ingest past {end2}")
    port = st["pageread"]["port"]
    c = PageApiClient(port, tenant, timeline)
    rels = {rel: n for rel, n in c.relations(1663, 5, end2).items() if n}
    rel, n = max(rels.items(), key=lambda kv: kv[1])
    pages = dict(c.pages([(rel, n)], end2))[rel]
    assert len(pages) == n
    raw = RawClient(st["gateway"]["port"])
    try:
        raw.start_pagestream(2, tenant, timeline)
        fork = (rel.spcnode, rel.dbnode, rel.relnode, rel.forknum)
        answers = raw.pipelined([v2_get_page(int(end2), int(end2), fork, b)
                                 for b in range(min(n, 20))])
        assert all(a[0] == 102 for a in answers)
    finally:
        raw.close()
    api.call("PUT", one + "/checkpoint", 200)  # flush + compaction: a job run
    after_m = {s: scrape(stack, s) for s in SERVICES}
    ids = f"tenant_id={tenant},timeline_id={timeline}"
    ing0, ing1 = before["ingest"], after_m["ingest"]
    assert ing1[f"pagestore_wal_records_total{{{ids}}}"] > \
        ing0[f"pagestore_wal_records_total{{{ids}}}"]
    assert ing1[f"pagestore_last_record_lsn{{{ids}}}"] >= int(end2)
    # Caught up with an idle primary: nothing received is waiting (IngestLag's own
    # arithmetic is unit-tested in tests/unit/test_ingest_lag.py).
    assert 0 <= ing1[f"pagestore_ingest_lag_bytes{{{ids}}}"] < 1 << 20
    assert 0 <= ing1[f"pagestore_ingest_lag_seconds{{{ids}}}"] < 60
    pr0, pr1 = before["pageread"], after_m["pageread"]
    key = "pagestore_getpage_latency_seconds_count{service=pageread}"
    assert pr1[key] > pr0.get(key, 0)
    # Pages needing redo were looked up in the (switched off) page cache: misses.
    assert pr1["pagestore_page_cache_lookups_total{result=miss}"] > \
        pr0.get("pagestore_page_cache_lookups_total{result=miss}", 0)
    assert pr1[f"pagestore_pageread_last_record_lsn{{{ids}}}"] >= int(end2)
    gw = after_m["gateway"]
    assert gw["pagestore_getpage_latency_seconds_count{service=gateway}"] >= min(n, 20) > \
        before["gateway"].get("pagestore_getpage_latency_seconds_count{service=gateway}", 0)
    assert gw["pagestore_gateway_blocks_asked_total{}"] >= min(n, 20)
    assert after_m["redo"]["pagestore_redo_records_total{}"] > \
        before["redo"].get("pagestore_redo_records_total{}", 0)
    assert after_m["redo"]["pagestore_redo_latency_seconds_count{}"] > 0
    hk0, hk1 = before["housekeeping"], after_m["housekeeping"]
    assert hk1["pagestore_housekeeping_job_seconds_count{job=compaction}"] > \
        hk0["pagestore_housekeeping_job_seconds_count{job=compaction}"]
    assert hk1["pagestore_housekeeping_job_seconds_count{job=gc}"] >= 1
    assert hk1["pagestore_layers{kind=image}"] >= 1 and hk1["pagestore_layer_bytes{kind=l1}"] > 0
    assert "pagestore_remote_upload_queue_layers{}" in hk1
    assert hk1["pagestore_errors_total{class=TenantNotFound,service=housekeeping}"] >= 1
    assert total(hk1, "pagestore_http_requests_total") > total(hk0, "pagestore_http_requests_total")
    # A GetPage error is counted by class in pageread.
    bad = pb.GetPageRequest(request_id=pb.RequestID(id=1), read_lsn=pb.ReadLsn(
        request_lsn=int(end)), rel=pb.RelTag(spc_oid=1663, db_oid=5, rel_number=999999),
        block_number=[0])
    answer = list(c.stub.GetPages(iter([bad]), metadata=c.md, timeout=60))
    assert answer[0].status_code == pb.GET_PAGE_STATUS_CODE_NOT_FOUND
    errs = scrape(stack, "pageread")
    assert total(errs, "pagestore_errors_total{class=NotFound") >= 1

    # ---- delete: a timeline with a branch is refused, the branch goes, then the tenant.
    assert "branch" in api.error("DELETE", one, 412)
    assert api.call("DELETE", f"/v1/tenant/{tenant}/timeline/{branch}", 202) is None
    api.error("GET", f"/v1/tenant/{tenant}/timeline/{branch}", 404)

    # ---- detach and attach through location_config (remote storage), idempotent.
    loc = f"/v1/tenant/{tenant}/location_config"
    api.call("PUT", loc, 200, json={"mode": "Detached"})
    assert tenant not in {t["id"] for t in api.call("GET", "/v1/tenant", 200)}
    api.error("GET", one, 404)
    api.call("PUT", loc, 200, json={"mode": "Detached"})
    assert "generation" in api.error("PUT", loc, 400, json={"mode": "AttachedSingle"})
    assert "mode" in api.error("PUT", loc, 400, json={"mode": "Sideways"})
    got = api.call("PUT", loc, 200, json={"mode": "AttachedSingle", "generation": 2,
                                          "tenant_conf": {"gc_horizon": 8192}})
    assert got["shards"] == [{"shard_id": tenant, "node_id": 1}]
    assert api.call("GET", one, 200)["state"] == "Active"
    assert api.call("GET", f"/v1/tenant/{tenant}/config", 200)[
        "tenant_specific_overrides"] == {"gc_horizon": 8192}
    api.call("PUT", loc, 200, json={"mode": "AttachedSingle", "generation": 2})
    api.call("POST", f"/v1/tenant/{tenant}/detach", 200)
    api.error("GET", f"/v1/tenant/{tenant}", 404)
    api.call("POST", f"/v1/tenant/{tenant}/attach", 202)
    pgbench(primary, "-t", "50")
    end3 = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    wait_until(lambda: Lsn.parse(api.call("GET", one, 200)["last_record_lsn"]) >= end3,
               timeout=120, what=f"ingest resumed past {end3} after the attach")

    assert api.call("DELETE", f"/v1/tenant/{tenant}", 200) is None
    api.error("GET", f"/v1/tenant/{tenant}", 404)
    assert api.call("DELETE", f"/v1/tenant/{tenant}", 200) is None  # gone already: 200
    slots = primary.psql("SELECT count(*) FROM pg_replication_slots")
    assert slots == "0", "deleting the tenant drops its timeline's slot"
    c.close()


@pytest.mark.parametrize("service", ["redo"])
def test_metrics_port_in_use_is_a_clear_error(stack: StackRunner, service: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        stack.init(f"{service}.listen_http_addr='127.0.0.1:{port}'")
        stack.allowed_errors.append("cannot start")
        proc = stack.run("start", check=False, timeout=120)
    assert proc.returncode != 0
    assert "Address already in use" in proc.stdout + proc.stderr or \
        "address already in use" in (proc.stdout + proc.stderr).lower()
