"""page_api.PageService must stay wire-compatible with Neon's (package, service, rpc
names and streaming shapes, message field numbers and types, enum values), as listed in
shared/reference/neon-protocols.md section 2."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor as F

from pagestore.proto import page_service_pb2

RPCS = {
    "GetBaseBackup": ("GetBaseBackupRequest", "GetBaseBackupResponseChunk", False, True),
    "GetDbSize": ("GetDbSizeRequest", "GetDbSizeResponse", False, False),
    "GetPages": ("GetPageRequest", "GetPageResponse", True, True),
    "GetRelSize": ("GetRelSizeRequest", "GetRelSizeResponse", False, False),
    "GetSlruSegment": ("GetSlruSegmentRequest", "GetSlruSegmentResponse", False, False),
    "LeaseLsn": ("LeaseLsnRequest", "LeaseLsnResponse", False, False),
}

U64, U32, BOOL, BYTES, STR, MSG, ENUM = (F.TYPE_UINT64, F.TYPE_UINT32, F.TYPE_BOOL,
                                         F.TYPE_BYTES, F.TYPE_STRING, F.TYPE_MESSAGE,
                                         F.TYPE_ENUM)
MESSAGES = {
    "ReadLsn": {1: ("request_lsn", U64), 2: ("not_modified_since_lsn", U64)},
    "RelTag": {1: ("spc_oid", U32), 2: ("db_oid", U32), 3: ("rel_number", U32),
               4: ("fork_number", U32)},
    "GetBaseBackupRequest": {1: ("lsn", U64), 2: ("replica", BOOL), 3: ("full", BOOL),
                             4: ("compression", ENUM)},
    "GetBaseBackupResponseChunk": {1: ("chunk", BYTES)},
    "GetDbSizeRequest": {1: ("read_lsn", MSG), 2: ("db_oid", U32)},
    "GetDbSizeResponse": {1: ("num_bytes", U64)},
    "GetPageRequest": {1: ("request_id", MSG), 2: ("request_class", ENUM), 3: ("read_lsn", MSG),
                       4: ("rel", MSG), 5: ("block_number", U32)},
    "RequestID": {1: ("id", U64), 2: ("attempt", U32)},
    "GetPageResponse": {1: ("request_id", MSG), 2: ("status_code", ENUM), 3: ("reason", STR),
                        4: ("rel", MSG), 5: ("page", MSG)},
    "Page": {1: ("block_number", U32), 2: ("image", BYTES)},
    "GetRelSizeRequest": {1: ("read_lsn", MSG), 2: ("rel", MSG), 3: ("allow_missing", BOOL)},
    "GetRelSizeResponse": {1: ("num_blocks", U32), 2: ("missing", BOOL)},
    "GetSlruSegmentRequest": {1: ("read_lsn", MSG), 2: ("kind", U32), 3: ("segno", U32)},
    "GetSlruSegmentResponse": {1: ("segment", BYTES)},
    "LeaseLsnRequest": {1: ("lsn", U64)},
    "LeaseLsnResponse": {1: ("expires", MSG)},
}
ENUMS = {
    "BaseBackupCompression": ["BASE_BACKUP_COMPRESSION_UNKNOWN", "BASE_BACKUP_COMPRESSION_NONE",
                              "BASE_BACKUP_COMPRESSION_GZIP"],
    "GetPageClass": ["GET_PAGE_CLASS_UNKNOWN", "GET_PAGE_CLASS_NORMAL",
                     "GET_PAGE_CLASS_PREFETCH", "GET_PAGE_CLASS_BACKGROUND"],
    "GetPageStatusCode": ["GET_PAGE_STATUS_CODE_UNKNOWN", "GET_PAGE_STATUS_CODE_OK",
                          "GET_PAGE_STATUS_CODE_NOT_FOUND", "GET_PAGE_STATUS_CODE_INVALID_REQUEST",
                          "GET_PAGE_STATUS_CODE_INTERNAL_ERROR", "GET_PAGE_STATUS_CODE_SLOW_DOWN"],
}


def test_service_shape() -> None:
    fd = page_service_pb2.DESCRIPTOR
    assert fd.package == "page_api"
    svc = fd.services_by_name["PageService"]
    assert svc.full_name == "page_api.PageService"
    assert {m.name for m in svc.methods} == set(RPCS)
    for m in svc.methods:
        req, resp, client_stream, server_stream = RPCS[m.name]
        assert m.input_type.name == req and m.output_type.name == resp
        assert m.client_streaming == client_stream and m.server_streaming == server_stream


def test_messages_and_enums() -> None:
    fd = page_service_pb2.DESCRIPTOR
    assert set(fd.message_types_by_name) == set(MESSAGES)
    for name, fields in MESSAGES.items():
        desc = fd.message_types_by_name[name]
        got = {f.number: (f.name, f.type) for f in desc.fields}
        assert got == fields, name
    assert desc.fields_by_name["expires"].message_type.full_name == "google.protobuf.Timestamp"
    for name, values in ENUMS.items():
        assert [v.name for v in fd.enum_types_by_name[name].values] == values
        assert [v.number for v in fd.enum_types_by_name[name].values] == list(range(len(values)))
    page_req = fd.message_types_by_name["GetPageRequest"]
    assert page_req.fields_by_name["block_number"].is_repeated
