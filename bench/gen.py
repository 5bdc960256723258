"""Generate Python for bench/proto/etcd with grpc_tools.protoc into bench/.work/gen/ (never committed)."""

from __future__ import annotations

import importlib
import shutil
import sys
from types import ModuleType

from bench.common import BENCH_DIR, WORK_DIR

PROTO_ROOT = BENCH_DIR / "proto" / "etcd"
GEN_DIR = WORK_DIR / "gen"


def generate_etcd() -> tuple[ModuleType, ModuleType]:
    """Regenerate (cheap) and import etcdserverpb.rpc_pb2 and rpc_pb2_grpc."""
    from grpc_tools import protoc  # grpcio-tools, a dev dependency

    if GEN_DIR.exists():
        shutil.rmtree(GEN_DIR)
    GEN_DIR.mkdir(parents=True)
    proto = PROTO_ROOT / "etcdserverpb" / "rpc.proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={GEN_DIR}",
            f"--grpc_python_out={GEN_DIR}",
            str(proto),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
    # A regular package, so that no other 'etcdserverpb' on sys.path can shadow it.
    (GEN_DIR / "etcdserverpb" / "__init__.py").write_text("")
    if str(GEN_DIR) not in sys.path:
        sys.path.insert(0, str(GEN_DIR))
    pb2 = importlib.import_module("etcdserverpb.rpc_pb2")
    pb2_grpc = importlib.import_module("etcdserverpb.rpc_pb2_grpc")
    return pb2, pb2_grpc
