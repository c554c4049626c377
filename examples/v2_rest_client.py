"""KServe v2 infer over REST with plain httpx: token ids in, generated token ids out.

    python examples/v2_rest_client.py --url http://localhost:8080 --model model --input_ids 1 2 3
"""

from __future__ import annotations

import argparse

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080", help="the predictor's HTTP address")
    parser.add_argument("--model", default="model", help="the served model's name")
    parser.add_argument("--input_ids", type=int, nargs="+", default=[1, 2, 3], help="the prompt's token ids")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    body = {
        "inputs": [{"name": "input_ids", "shape": [1, len(args.input_ids)], "datatype": "INT64",
                    "data": args.input_ids}],
        "parameters": {"max_tokens": args.max_tokens, "temperature": args.temperature},
    }
    response = httpx.post(f"{args.url}/v2/models/{args.model}/infer", json=body, timeout=120)
    response.raise_for_status()
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    length = outputs["output_lengths"][0]
    print("output_ids:", outputs["output_ids"][:length])
    print("finish_reason:", outputs["finish_reason"][0])


if __name__ == "__main__":
    main()
