"""The RemoteStorage contract, against each backend's real server: a directory, S3
through moto's server mode, Azure Blob through Azurite.  Objects round-trip whole and by
byte range, list by prefix, delete (a missing one too), head; a missing object is
RemoteObjectNotFound; wrong credentials and a missing bucket/container are permanent
errors at start that say what is wrong; the failpoints fail puts and gets."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pagestore import failpoints
from pagestore.errors import RemoteObjectNotFound, RemoteStorageError
from pagestore.remote import open_remote_storage

BACKENDS = ("local", "s3", "azure")


@pytest.mark.parametrize("kind", BACKENDS)
def test_backend_contract(remote_storage, kind: str, work_dir) -> None:
    target = remote_storage(kind)
    st = target.storage
    data = os.urandom(300_000)
    st.put("tenants/a/timelines/b/layer-00000001", data)
    src = work_dir / "src.bin"
    src.write_bytes(data[::-1])
    st.put_file("tenants/a/timelines/b/other-00000001", src)
    st.put("tenants/a/tenant-manifest-00000001.json", b"{}")
    st.put("tenants/ab/x", b"not under tenants/a/")
    assert st.get("tenants/a/timelines/b/layer-00000001") == data
    assert st.get("tenants/a/timelines/b/layer-00000001", 1000, 9192) == data[1000:9192]
    assert st.get("tenants/a/timelines/b/other-00000001", 0, 10) == data[::-1][:10]
    listed = st.list("tenants/a/")
    assert [o.key for o in listed] == ["tenants/a/tenant-manifest-00000001.json",
                                       "tenants/a/timelines/b/layer-00000001",
                                       "tenants/a/timelines/b/other-00000001"]
    assert {o.key: o.size for o in listed}["tenants/a/timelines/b/layer-00000001"] == len(data)
    assert [o.key for o in st.list("tenants/a/timelines/b/lay")] == [
        "tenants/a/timelines/b/layer-00000001"]
    head = st.head("tenants/a/timelines/b/other-00000001")
    assert head is not None and head.size == len(data)
    assert st.head("tenants/a/nothing") is None
    out = work_dir / "down.bin"
    assert st.download("tenants/a/timelines/b/layer-00000001", out) == len(data)
    assert out.read_bytes() == data
    with pytest.raises(RemoteObjectNotFound):
        st.get("tenants/a/nothing")
    with pytest.raises(RemoteObjectNotFound):
        st.get("tenants/a/nothing", 0, 10)
    st.delete("tenants/a/timelines/b/layer-00000001")
    st.delete("tenants/a/timelines/b/layer-00000001")  # a missing object is fine
    assert st.head("tenants/a/timelines/b/layer-00000001") is None
    # Creating an object only if it is not there: the generation claim of an attach.
    assert st.put_new("tenants/a/tenant-manifest-00000002.json", b"first")
    assert not st.put_new("tenants/a/tenant-manifest-00000002.json", b"second")
    assert st.get("tenants/a/tenant-manifest-00000002.json") == b"first"
    # Replacing an object is whole.
    st.put("tenants/a/tenant-manifest-00000001.json", b'{"v": 2}')
    assert st.get("tenants/a/tenant-manifest-00000001.json") == b'{"v": 2}'

    failpoints.configure("remote-upload", "1*return")
    failpoints.configure("remote-download", "1*return")
    try:
        with pytest.raises(RemoteStorageError, match="injected failure"):
            st.put("tenants/a/f", b"x")
        st.put("tenants/a/f", b"x")
        with pytest.raises(RemoteStorageError, match="injected failure"):
            st.get("tenants/a/f")
        assert st.get("tenants/a/f") == b"x"
    finally:
        failpoints.configure("remote-upload", "off")
        failpoints.configure("remote-download", "off")


@pytest.mark.parametrize("kind", ("s3", "azure"))
def test_bad_credentials_and_missing_bucket_fail_at_start(remote_storage, monkeypatch,
                                                          kind: str) -> None:
    target = remote_storage(kind)
    cfg = target.config
    if kind == "s3":
        missing = dataclasses.replace(cfg, bucket_name="no-such-bucket")
    else:
        missing = dataclasses.replace(cfg, container_name="no-such-container")
    with pytest.raises(RemoteStorageError, match="does not exist") as e:
        open_remote_storage(missing)
    assert e.value.permanent
    if kind == "azure":  # moto accepts any key; Azurite checks the shared key signature
        monkeypatch.setenv("AZURE_STORAGE_ACCESS_KEY", "d3Jvbmcga2V5")
        with pytest.raises(RemoteStorageError, match="access refused") as e:
            open_remote_storage(cfg)
        assert e.value.permanent
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(RemoteStorageError, match="no AWS credentials") as e:
            open_remote_storage(cfg)
        assert e.value.permanent


def test_stack_refuses_to_start_against_a_missing_bucket(stack, remote_storage) -> None:
    target = remote_storage("s3")
    missing = dataclasses.replace(target.config, bucket_name="no-such-bucket")
    target.config = missing
    stack.init(target.override())
    stack.allowed_errors += [r"cannot start: S3 bucket no-such-bucket .* does not exist"]
    proc = stack.run("start", check=False)
    assert proc.returncode != 0
    assert "S3 bucket no-such-bucket" in proc.stderr and "does not exist" in proc.stderr, \
        proc.stderr
