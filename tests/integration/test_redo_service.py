"""The redo service over gRPC: pages from real records, and clear errors (never a page)
for a base image of the wrong size, a nonsense record and records out of order."""

from __future__ import annotations

import grpc

from pagestore import values
from pagestore.keys import rel_block_key
from pagestore.lsn import Lsn
from pagestore.pg.xlogrecord import decode_record
from pagestore.proto import common_pb2, redo_pb2, redo_pb2_grpc
from pagestore.redo.bufpage import get_item_id, new_page, page_get_lsn, page_get_max_offset_number
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import client_channel
from tests.unit.test_wal_fuzz import SEEDS


def _heap_insert() -> tuple[bytes, Lsn, bytes]:
    lsn, end, raw = SEEDS["heap_insert"]
    rec = decode_record(raw, Lsn.parse(lsn), Lsn.parse(end))
    blk = rec.blocks[0]
    return rel_block_key(blk.rel, blk.blkno).to_bytes(), rec.end_lsn, raw


def test_redo_rpcs(stack: StackRunner) -> None:
    stack.init()
    stack.start()
    port = stack.status()["services"]["redo"]["port"]
    key, lsn, raw = _heap_insert()
    rec = decode_record(raw, Lsn(0), lsn)
    offnum = int.from_bytes(rec.main_data[0:2], "little")  # xl_heap_insert.offnum
    base = bytes(new_page(0))
    # The heap page must already hold items before offnum for the insert to land there.
    base_page = bytearray(base)
    for i in range(1, offnum):
        from pagestore.redo.bufpage import page_add_item

        page_add_item(base_page, b"\x00" * 24, i)
    record = common_pb2.KeyValue(key=key, lsn=int(lsn), value=values.pg_record(raw, 0, False))
    with client_channel(f"127.0.0.1:{port}") as ch:
        stub = redo_pb2_grpc.RedoStub(ch)
        page = stub.Redo(redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=bytes(base_page),
                                              records=[record]), timeout=30).page
        assert len(page) == 8192
        assert page_get_lsn(bytearray(page)) == lsn
        assert page_get_max_offset_number(bytearray(page)) == offnum
        _off, _flags, length = get_item_id(bytearray(page), offnum)
        assert length == len(rec.blocks[0].data) - 5 + 23  # header rebuilt from xl_heap_header

        def refused(req: redo_pb2.RedoRequest) -> grpc.StatusCode:
            try:
                stub.Redo(req, timeout=30)
            except grpc.RpcError as e:
                return e.code()
            raise AssertionError("a bad redo request returned a page")

        assert refused(redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=b"x" * 100,
                                            records=[record])) == grpc.StatusCode.INVALID_ARGUMENT
        nonsense = common_pb2.KeyValue(key=key, lsn=int(lsn), value=b"\x01\x00\x00" + b"\xff" * 40)
        assert refused(redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=bytes(base_page),
                                            records=[nonsense])) == grpc.StatusCode.DATA_LOSS
        truncated = common_pb2.KeyValue(key=key, lsn=int(lsn),
                                        value=values.pg_record(raw[:-10], 0, False))
        assert refused(redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=bytes(base_page),
                                            records=[truncated])) == grpc.StatusCode.DATA_LOSS
        backwards = [common_pb2.KeyValue(key=key, lsn=int(lsn), value=record.value),
                     common_pb2.KeyValue(key=key, lsn=int(lsn) - 8, value=record.value)]
        assert refused(redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=bytes(base_page),
                                            records=backwards)) == grpc.StatusCode.INVALID_ARGUMENT
        # A batch answers each request on its own.
        batch = stub.RedoBatch(redo_pb2.RedoBatchRequest(requests=[
            redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=bytes(base_page),
                                 records=[record]),
            redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=b"short", records=[record]),
        ]), timeout=30)
        assert batch.results[0].page == page and batch.results[0].grpc_code == 0
        assert batch.results[1].grpc_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "8192" in batch.results[1].error
    stack.allowed_errors.append(r"rpc failed")
