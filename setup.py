"""Build hooks: the gRPC/protobuf stubs from protos/, and the compiled WAL decoder core.

The compiled core (pagestore/pg/_walcore.c, a CPython C extension) is optional: when no C
compiler or Python headers are present the build says so and pagestore runs its
pure-Python decoder, which stays the reference (docs/performance.md).

The stubs are never committed and never hand-edited.  Any install (`pip install .`,
`pip install -e .`, a wheel build in the Dockerfile) runs `build_py`, which runs protoc
from grpcio-tools first.  protoc sees protos/ under the virtual path `pagestore/proto`, so
the generated modules import each other as `pagestore.proto.x_pb2`.  After editing a
.proto file, re-run `pip install -e .` (or `scripts/setup`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted((ROOT / "protos").glob("*.proto"))
    out = ROOT / "pagestore" / "proto"
    out.mkdir(exist_ok=True)
    (out / "__init__.py").write_text(
        '"""Generated protobuf/gRPC stubs (from protos/, by setup.py). Do not edit."""\n'
    )
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugin types the *_grpc modules (stubs, servicers, add_*_to_server).
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    mypy_grpc = shutil.which("protoc-gen-mypy_grpc", path=search)
    if mypy_grpc is None:
        sys.exit("protoc-gen-mypy_grpc not found: install mypy-protobuf (a build requirement)")
    args = [
        "grpc_tools.protoc",
        f"-Ipagestore/proto={ROOT / 'protos'}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--mypy_grpc_out={ROOT}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed: see the messages above")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


class BuildExtOptional(build_ext):
    """Build the compiled core, or explain in one line why pagestore will run without it."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, LinkError, a missing compiler
            print(f"setup.py: WARNING: could not build {ext.name} ({e}); pagestore will use "
                  "its pure-Python WAL decoder. Install gcc and the Python headers "
                  "(apt-get install gcc python3-dev) and reinstall for the compiled core.",
                  file=sys.stderr)


WALCORE = Extension("pagestore.pg._walcore", ["pagestore/pg/_walcore.c"], optional=True,
                    extra_compile_args=["-O2", "-std=c11"])

setup(cmdclass={"build_py": BuildPyWithStubs, "build_ext": BuildExtOptional},
      ext_modules=[WALCORE])
