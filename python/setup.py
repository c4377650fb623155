"""Builds the package with gRPC stubs generated from the repository's proto/ (grpcio-tools)."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "proto"))
PROTO = os.path.join(PROTO_DIR, "leasekeeper", "v1", "leasekeeper.proto")


def generate_stubs():
    """proto/leasekeeper/v1/leasekeeper.proto -> leasekeeper/v1/leasekeeper_pb2{,_grpc}.py.

    The proto package leasekeeper.v1 maps onto this Python package's `v1` subpackage, so the
    generated imports (`from leasekeeper.v1 import ...`) resolve inside it.
    """
    import grpc_tools
    from grpc_tools import protoc

    if not os.path.exists(PROTO):
        raise SystemExit(f"{PROTO} not found: build from a checkout of the leasekeeper repository")
    out_pkg = os.path.join(HERE, "leasekeeper", "v1")
    os.makedirs(out_pkg, exist_ok=True)
    init = os.path.join(out_pkg, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as f:
            f.write('"""Generated from proto/leasekeeper/v1 at build time."""\n')
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={HERE}",
            f"--grpc_python_out={HERE}",
            PROTO,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed on {PROTO} (exit {rc})")


class BuildPyWithStubs(build_py):
    def run(self):
        generate_stubs()
        super().run()


# Every build step (metadata, wheel, sdist) needs the generated package to exist.
generate_stubs()
setup(cmdclass={"build_py": BuildPyWithStubs})
