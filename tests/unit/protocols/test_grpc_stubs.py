"""The committed gRPC modules are what `make grpc-stubs` makes of the committed .proto."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[3]
STUBS = Path("onnx_serving/protocols/grpc_stubs")


def test_the_committed_stubs_are_generated_from_the_committed_proto(tmp_path: Path) -> None:
    (tmp_path / STUBS).mkdir(parents=True)
    shutil.copy(ROOT / STUBS / "open_inference.proto", tmp_path / STUBS)
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    args += [f"--pyi_out={tmp_path}", str(tmp_path / STUBS / "open_inference.proto")]
    assert protoc.main(args) == 0
    for name in ("open_inference_pb2.py", "open_inference_pb2.pyi", "open_inference_pb2_grpc.py"):
        made = (tmp_path / STUBS / name).read_text()
        assert made == (ROOT / STUBS / name).read_text(), f"{name}: run `make grpc-stubs`"


# Prints, for every method of GRPCInferenceService in MODULE, its messages' fields (number,
# type), nested messages included. Run in a process of its own per module: both define the
# package `inference` in protobuf's default pool, so one process can't import both.
FIELDS = """
import importlib, json, sys
pool = importlib.import_module(sys.argv[1]).DESCRIPTOR.services_by_name["GRPCInferenceService"]
def fields(message, seen):
    for f in message.fields:
        seen[f.full_name] = (f.number, f.type)
        if f.message_type is not None and f.message_type.full_name not in seen:
            seen[f.message_type.full_name] = ()
            fields(f.message_type, seen)
    return seen
print(json.dumps({"service": pool.full_name, "methods": {m.name: [
    fields(m.input_type, {}), fields(m.output_type, {})] for m in pool.methods}}))
"""


def fields_of(module: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FIELDS, module], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_service_is_the_one_triton_s_clients_call() -> None:
    ours = fields_of("onnx_serving.protocols.grpc_stubs.open_inference_pb2")
    theirs = fields_of("tritonclient.grpc.service_pb2")
    assert ours["service"] == theirs["service"] == "inference.GRPCInferenceService"
    # Every field of ours is a field of Triton's, with its number and type.
    for method, sides in ours["methods"].items():
        for mine, triton in zip(sides, theirs["methods"][method], strict=True):
            for name, spec in mine.items():
                assert triton.get(name) == spec, f"{method}: {name}"
