"""The router's OpenAI edge with the official `openai` client: `model="auto"` lets the router choose
the small or the large model, and its x-route headers say which one answered and why (the policy's
score, a fallback, a cascade escalation). A chat completion, then the same conversation streamed.

    python examples/router_openai_client.py --url http://localhost:8000 --prompt "Hello"
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from openai import OpenAI


def print_route(headers: Mapping[str, str]) -> None:
    routing = {name: value for name, value in headers.items() if name.lower().startswith("x-route")}
    print("routing:", ", ".join(f"{name}={value}" for name, value in sorted(routing.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8000", help="the router's HTTP address")
    parser.add_argument("--model", default="auto", help="auto (the router chooses) or a target's model name")
    parser.add_argument("--prompt", default="Write a Python function that merges two sorted lists.")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # The API key is not checked by the router; the client insists on one.
    client = OpenAI(base_url=f"{args.url}/openai/v1", api_key="unused")
    request = dict(model=args.model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens,
                   temperature=args.temperature, seed=args.seed)

    raw = client.chat.completions.with_raw_response.create(**request)
    print_route(raw.headers)
    completion = raw.parse()
    print("whole:", completion.choices[0].message.content)
    print("model:", completion.model, "finish_reason:", completion.choices[0].finish_reason)

    with client.chat.completions.with_streaming_response.create(**request, stream=True) as response:
        print_route(response.headers)
        print("streamed: ", end="", flush=True)
        for chunk in response.parse():
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()


if __name__ == "__main__":
    main()
