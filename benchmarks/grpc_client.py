"""A gRPC load client for the Open Inference Protocol: N calls in flight on one channel
(HTTP/2 multiplexes them on one connection), each a ModelInfer of the demo model with
`values` float32 values as raw contents, back to back for a fixed time. Prints one JSON
line like pyclient.py's: requests, errors, latency percentiles in microseconds.

    python -m benchmarks.grpc_client --port 8001 --model linear-2x --values 1 -c 16 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

from benchmarks.pyclient import summary
from onnx_serving.protocols.grpc_stubs import open_inference_pb2 as pb
from onnx_serving.protocols.grpc_stubs import open_inference_pb2_grpc as pb_grpc


def request(model: str, values: int) -> pb.ModelInferRequest:
    x = np.linspace(-1.0, 1.0, values, dtype="<f4")
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[values, 1])
    message.raw_input_contents.append(x.tobytes())
    return message


async def run(address: str, message: pb.ModelInferRequest, conns: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        await call(message, timeout=30)  # connected and warm before the clock starts
        started = time.perf_counter()
        deadline = started + duration

        async def caller() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await call(message, timeout=30)
                    latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError:
                    errors += 1

        await asyncio.gather(*(caller() for _ in range(conns)))
        result = summary(latencies, errors, time.perf_counter() - started)
    return {**result, "requests": len(latencies) + errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="linear-2x")
    parser.add_argument("--values", type=int, default=1)
    parser.add_argument("-c", "--conns", type=int, default=16, help="calls in flight")
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    args = parser.parse_args()
    message = request(args.model, args.values)
    result = asyncio.run(run(f"{args.host}:{args.port}", message, args.conns, args.duration))
    print("GRPC_JSON " + json.dumps(result))


if __name__ == "__main__":
    main()
