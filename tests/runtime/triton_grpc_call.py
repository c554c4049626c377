"""One v2 infer with tritonclient's gRPC client, run in a process of its own: tritonclient.grpc and
kserve both register the `inference.*` protobuf messages, so one process cannot import both.

Usage: python triton_grpc_call.py '{"url": ..., "model": ..., "prompts": [[...]], "parameters": {...},
"client_timeout": 60, "priority": 0}' (priority optional). Prints one JSON line: the outputs, or
the error's status and message.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException


def infer(url: str, model: str, prompts: list[list[int]], parameters: dict, client_timeout: float,
          priority: int = 0) -> dict:
    width = max(len(prompt) for prompt in prompts)
    ids = np.array([prompt + [0] * (width - len(prompt)) for prompt in prompts], dtype=np.int64)
    lengths = np.array([len(prompt) for prompt in prompts], dtype=np.int64)
    inputs = [triton_grpc.InferInput("input_ids", list(ids.shape), "INT64"),
              triton_grpc.InferInput("input_lengths", list(lengths.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(lengths)
    client = triton_grpc.InferenceServerClient(url)
    try:
        result = client.infer(model, inputs, parameters=parameters, client_timeout=client_timeout, priority=priority)
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    finally:
        client.close()
    return {
        "output_ids": result.as_numpy("output_ids").tolist(),
        "output_lengths": result.as_numpy("output_lengths").tolist(),
        # BYTES elements come back as bytes: decode them as a client would.
        "finish_reason": [reason.decode() for reason in result.as_numpy("finish_reason")],
    }


if __name__ == "__main__":
    print(json.dumps(infer(**json.loads(sys.argv[1]))))
