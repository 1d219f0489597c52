from __future__ import annotations

from typing import NamedTuple

import grpc
import pytest

from pagestore import errors


def test_every_error_has_code_and_sqlstate() -> None:
    for name in ("BadRequest", "ProtocolError", "TenantNotFound", "CorruptLayerError",
                 "UnsupportedWalRecord", "CatalogRevisionMismatch", "LsnTimeout"):
        cls = errors.error_class(name)
        assert cls is not None and issubclass(cls, errors.PagestoreError)
        assert isinstance(cls.grpc_code, grpc.StatusCode)
        assert len(cls.sqlstate) == 5


class _Metadatum(NamedTuple):  # what grpc's trailing_metadata() yields
    key: str
    value: str


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, cls: str | None) -> None:
        self._code, self._details = code, details
        self._md = (_Metadatum(errors.ERROR_CLASS_METADATA_KEY, cls),) if cls else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[_Metadatum, ...]:
        return self._md


@pytest.mark.parametrize(("code", "cls_name", "expected"), [
    (grpc.StatusCode.NOT_FOUND, "TenantNotFound", errors.TenantNotFound),
    (grpc.StatusCode.NOT_FOUND, None, errors.NotFound),
    (grpc.StatusCode.DATA_LOSS, "CorruptLayerError", errors.CorruptLayerError),
    (grpc.StatusCode.UNKNOWN, None, errors.PagestoreError),
    (grpc.StatusCode.INVALID_ARGUMENT, "NoSuchClass", errors.BadRequest),
])
def test_from_rpc_error(code: grpc.StatusCode, cls_name: str | None, expected: type) -> None:
    err = errors.from_rpc_error(_FakeRpcError(code, "tenant x not found", cls_name))
    assert type(err) is expected
    assert err.message == "tenant x not found"


def test_from_rpc_error_with_aio_metadata() -> None:
    class AioLike(_FakeRpcError):
        def trailing_metadata(self):  # type: ignore[override]
            return ((errors.ERROR_CLASS_METADATA_KEY, "LsnTimeout"),)

    err = errors.from_rpc_error(AioLike(grpc.StatusCode.DEADLINE_EXCEEDED, "slow", None))
    assert type(err) is errors.LsnTimeout
