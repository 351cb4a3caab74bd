"""The generated protobuf / gRPC modules of proto/shardlm/v1/*.proto.

They are generated with grpcio-tools into ``_generated/`` next to this file, by
``clients/python/generate.sh`` or here on first import (again whenever a .proto file is newer
than its output). The .proto files are found at ``$SHARDLM_PROTO_DIR`` or ``<repo>/proto``.
"""
import importlib
import os
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(_HERE, "_generated")
PROTOS = ("shardlm/v1/generation.proto", "shardlm/v1/worker.proto")
_lock = threading.Lock()


def proto_dir():
    d = os.environ.get("SHARDLM_PROTO_DIR") or os.path.normpath(
        os.path.join(_HERE, "..", "..", "..", "proto"))
    if not os.path.isfile(os.path.join(d, PROTOS[0])):
        raise RuntimeError(
            f"shardlm_client: cannot find {PROTOS[0]} under {d}; set SHARDLM_PROTO_DIR to the "
            "repository's proto/ directory")
    return d


def _stale(src_dir):
    for proto in PROTOS:
        stem = proto[: -len(".proto")]
        src = os.path.join(src_dir, proto)
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            out = os.path.join(OUT_DIR, stem + suffix)
            if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
                return True
    return False


def generate(force=False):
    """Runs grpc_tools.protoc when the generated files are missing or stale; returns OUT_DIR."""
    with _lock:
        src_dir = proto_dir()
        if not force and not _stale(src_dir):
            return OUT_DIR
        try:
            from grpc_tools import protoc
            import grpc_tools
        except ImportError as e:
            raise RuntimeError(
                "shardlm_client: grpcio-tools is needed to generate the stubs: "
                "python3 -m pip install grpcio grpcio-tools protobuf") from e
        os.makedirs(OUT_DIR, exist_ok=True)
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        args = ["grpc_tools.protoc", f"-I{src_dir}", f"-I{well_known}",
                f"--python_out={OUT_DIR}", f"--grpc_python_out={OUT_DIR}", *PROTOS]
        if protoc.main(args) != 0:
            raise RuntimeError("shardlm_client: grpc_tools.protoc failed: " + " ".join(args))
        return OUT_DIR


def load():
    """(generation_pb2, generation_pb2_grpc), generating them first if needed."""
    try:
        generate()
    except RuntimeError:
        # No .proto files (an installed copy): use what was generated before, if anything.
        if not os.path.isdir(OUT_DIR):
            raise
    if OUT_DIR not in sys.path:
        sys.path.insert(0, OUT_DIR)
    pb2 = importlib.import_module("shardlm.v1.generation_pb2")
    pb2_grpc = importlib.import_module("shardlm.v1.generation_pb2_grpc")
    return pb2, pb2_grpc
