"""Faults on the read path, made certain with failpoints: pageread's tail follower
failing, ingest restarting under a follower that holds values ingest sends again, redo
failing and dying, and a flush finishing while ingest takes a subscriber's snapshot.
Each time the page read afterwards is the new one: never an error that stays, never a
stale page.

The page under test is block 0 of a one-row table whose row is updated to a new marker
before each fault; a read at the update's LSN must show that marker.
"""

from __future__ import annotations

import grpc
import pytest

from pagestore.keys import RelTag
from pagestore.layers.delta import DeltaLayerReader
from pagestore.lsn import Lsn
from pagestore.proto import page_service_pb2 as pb
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import PageApiClient
from tests.fixtures.util import wait_until
from tests.integration.test_ingest_faults import failpoint, hits, loop_status
from tests.integration.test_ingest_service import attach, status


class Marks:
    """The one-row table and reads of its page through pageread's page_api."""

    def __init__(self, stack: StackRunner, primary, tenant: str, timeline: str) -> None:
        self.stack, self.primary = stack, primary
        self.tenant, self.timeline = tenant, timeline
        db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        self.rel = RelTag(1663, db, int(primary.psql("SELECT pg_relation_filenode('marks')")), 0)
        self.n = 0

    def update(self) -> tuple[bytes, Lsn]:
        """A new marker in the row; the marker and the LSN it is at."""
        self.n += 1
        marker = f"marker-{self.n:04d}"
        self.primary.psql(f"UPDATE marks SET v = '{marker}'")
        return marker.encode(), Lsn.parse(self.primary.psql("SELECT pg_current_wal_flush_lsn()"))

    def client(self) -> PageApiClient:
        port = self.stack.status()["services"]["pageread"]["port"]
        return PageApiClient(port, self.tenant, self.timeline)

    def read(self, lsn: Lsn) -> pb.GetPageResponse:
        """One GetPage of block 0 at ``lsn`` (waiting for it, as a compute would)."""
        client = self.client()
        try:
            req = pb.GetPageRequest(request_id=pb.RequestID(id=1), read_lsn=pb.ReadLsn(
                request_lsn=int(lsn), not_modified_since_lsn=int(lsn)),
                rel=client.rel(self.rel), block_number=[0])
            return next(iter(client.stub.GetPages(iter([req]), metadata=client.md,
                                                  timeout=60)))
        finally:
            client.close()

    def page(self, lsn: Lsn) -> bytes:
        resp = self.read(lsn)
        assert resp.status_code == pb.GET_PAGE_STATUS_CODE_OK, resp.reason
        return resp.page[0].image


@pytest.mark.slow
def test_read_path_faults_serve_no_stale_page(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory(settings={"autovacuum": "off"})
    primary.psql("CREATE TABLE marks (id int PRIMARY KEY, v text)")
    primary.psql("INSERT INTO marks VALUES (1, 'marker-0000')")
    # Layers every 2 s; the read timeout is long enough for any wait below.  No
    # compaction: an image layer made between an update and its read would serve the page
    # without redo (the redo faults below would not be met) and the new-files check
    # below reads delta layers only.
    stack.init("ingest.checkpoint_timeout='2s'", "pageread.wait_lsn_timeout='60s'",
               "tenant.compaction_period='0s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    m = Marks(stack, primary, tenant, timeline)
    stack.allowed_errors += [r"redo of one request failed unexpectedly",
                             r"tail-follower loop failed unexpectedly"]

    marker, lsn = m.update()
    assert marker in m.page(lsn)  # loads the timeline in pageread

    # The tail follower fails: it is restarted, resubscribes, and reads go on.
    failpoint(stack, "pageread", "pageread-tail-batch", "1*return")
    marker, lsn = m.update()
    assert marker in m.page(lsn)
    assert hits(stack, "pageread", "pageread-tail-batch") == 1
    follower = loop_status(stack, tenant, timeline, "pageread", "tail-follower")
    assert follower["restarts"] == 1 and follower["state"] == "running"
    assert follower["last_error"] == "FailpointError: failpoint pageread-tail-batch"

    # Ingest restarts while pageread's tail holds values it has not flushed (the flush is
    # held): the new ingest streams them again; the follower takes them as held already.
    failpoint(stack, "ingest", "ingest-flush-start", "pause")
    marker, lsn = m.update()
    assert marker in m.page(lsn)  # from pageread's tail: no layer has it
    assert Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"]) < lsn
    stack.kill("ingest")
    stack.run("start")
    marker, lsn = m.update()
    assert marker in m.page(lsn)
    wait_until(lambda: loop_status(stack, tenant, timeline, "pageread", "tail-follower")
               ["detail"] == "following", timeout=60, what="the follower following again")
    assert "ValueError" not in (stack.workdir / "logs" / "pageread.log").read_text()

    # A flush of WAL that changed no page writes no layer file, yet moves
    # disk_consistent_lsn: the layer map's version moves with it, or a follower that must
    # resubscribe afterwards would ask ingest for WAL below its disk_consistent_lsn
    # forever.  The listener and ingest's flushes are held, so only that resubscription
    # can bring the next marker.
    tl_dir = stack.workdir / "tenants" / tenant / "timelines" / timeline
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
               >= lsn, timeout=60, what="the last marker flushed")
    files = sorted(p.name for p in tl_dir.iterdir())
    message = Lsn.parse(primary.psql(
        "SELECT pg_logical_emit_message(false, 'pagestore', 'no page changes here')"))
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
               >= message, timeout=60, what="a flush without values")
    # No layer file for it: a file that appeared holds the values of other records only
    # (the bgwriter's RUNNING_XACTS may land next to it and update the checkpoint key).
    for name in sorted({p.name for p in tl_dir.iterdir()
                        if not p.name.endswith("___temp")} - set(files)):
        with DeltaLayerReader(tl_dir / name) as r:
            lsns = [lsn for _, lsn, _, _ in r.iter_entries(values=False)]
        # (values carry their record's end LSN, which the message function returns)
        assert lsns and message not in lsns, (name, [hex(x) for x in lsns], message)
    failpoint(stack, "pageread", "pageread-notify-reload", "pause")
    stack.kill("ingest")
    stack.run("start")
    failpoint(stack, "ingest", "ingest-flush-start", "pause")
    marker, lsn = m.update()
    assert marker in m.page(lsn)  # only the resubscription can have brought it
    failpoint(stack, "ingest", "ingest-flush-start", "off")
    failpoint(stack, "pageread", "pageread-notify-reload", "off")

    # Redo fails for one request: that request gets an error, the next one the page.
    failpoint(stack, "redo", "redo-apply", "1*return")
    marker, lsn = m.update()
    resp = m.read(lsn)
    assert resp.status_code == pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR
    assert "FailpointError: failpoint redo-apply" in resp.reason
    assert marker in m.page(lsn)

    # The redo service dies: reads fail while it is down and work once it is back.
    failpoint(stack, "redo", "redo-apply", "1*kill")
    marker, lsn = m.update()
    with pytest.raises(grpc.RpcError) as err:
        m.read(lsn)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "redo" in (err.value.details() or "")
    wait_until(lambda: stack.status()["services"]["redo"]["health"] == "DOWN", timeout=30,
               what="redo killed by the failpoint")
    stack.run("start")
    assert marker in m.page(lsn)

    # A flush finishes while ingest takes a subscriber's snapshot.  pageread restarts and
    # loads the timeline (layer map at D); its follower subscribes from D; ingest holds
    # the snapshot while a new marker is written and flushed past D; pageread's listener
    # is held too, so only the subscription can bring the marker.  The snapshot must not
    # leave out what was flushed meanwhile (ingest refuses a subscription below its
    # disk_consistent_lsn and the follower resubscribes from its reloaded map).
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
               >= lsn, timeout=60, what="the last marker flushed")
    stack.kill("pageread")
    stack.run("start")
    failpoint(stack, "pageread", "pageread-notify-reload", "pause")
    failpoint(stack, "ingest", "ingest-subscribe-snapshot", "1*pause")
    m.page(lsn)  # loads the timeline; its follower's subscription is held in ingest
    wait_until(lambda: hits(stack, "ingest", "ingest-subscribe-snapshot") == 1, timeout=30,
               what="the follower's subscription held")
    marker, lsn = m.update()
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
               >= lsn, timeout=60, what="the new marker flushed while the snapshot waits")
    failpoint(stack, "ingest", "ingest-subscribe-snapshot", "off")
    assert marker in m.page(lsn)
    failpoint(stack, "pageread", "pageread-notify-reload", "off")
    marker, lsn = m.update()
    assert marker in m.page(lsn)
