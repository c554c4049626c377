"""The generate extension's stream (server-sent events) over httpx: token ids printed as they arrive.

    python examples/generate_stream_client.py --url http://localhost:8080 --model model --input_ids 1 2 3
"""

from __future__ import annotations

import argparse
import json

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080", help="the predictor's HTTP address")
    parser.add_argument("--model", default="model", help="the served model's name")
    parser.add_argument("--input_ids", type=int, nargs="+", default=[1, 2, 3], help="the prompt's token ids")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    body = {"input_ids": args.input_ids, "parameters": {"max_tokens": args.max_tokens, "temperature": args.temperature}}
    url = f"{args.url}/v2/models/{args.model}/generate_stream"
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                raise SystemExit(f"the stream failed: {event['error']}")
            print("output_ids:", event["output_ids"], flush=True)
            if event["finish_reason"] is not None:
                print("finish_reason:", event["finish_reason"])


if __name__ == "__main__":
    main()
