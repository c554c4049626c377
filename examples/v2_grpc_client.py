"""KServe v2 infer over gRPC with Triton's client (`pip install 'tritonclient[grpc]'`).

    python examples/v2_grpc_client.py --url localhost:8081 --model model --input_ids 1 2 3

KServe's gRPC parameters are bool, int64 or string: send floats as strings ("0.7").
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as triton_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8081", help="the predictor's gRPC address (host:port)")
    parser.add_argument("--model", default="model", help="the served model's name")
    parser.add_argument("--input_ids", type=int, nargs="+", default=[1, 2, 3], help="the prompt's token ids")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    input_ids = triton_grpc.InferInput("input_ids", [1, len(args.input_ids)], "INT64")
    input_ids.set_data_from_numpy(np.array([args.input_ids], dtype=np.int64))
    parameters = {"max_tokens": args.max_tokens, "temperature": str(args.temperature)}
    with triton_grpc.InferenceServerClient(args.url) as client:
        result = client.infer(args.model, [input_ids], parameters=parameters, client_timeout=120)
    length = result.as_numpy("output_lengths")[0]
    print("output_ids:", result.as_numpy("output_ids")[0][:length].tolist())
    print("finish_reason:", result.as_numpy("finish_reason")[0].decode())


if __name__ == "__main__":
    main()
