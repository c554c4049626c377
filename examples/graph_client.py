"""An InferenceGraph call with plain httpx: a KServe v1 predict body posted to the graph's URL (the
graph router ignores the path). On `make serve`'s route graph the router decides and a Switch
sends the request to the chosen model's transformer; the answer is that transformer's.

    python examples/graph_client.py --url http://localhost:8080 --prompt "Hello"
"""

from __future__ import annotations

import argparse

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080", help="the graph's address")
    parser.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    prompts = args.prompt or ["How are you today?"]
    body = {"instances": [{"prompt": prompt, "max_tokens": args.max_tokens, "temperature": args.temperature}
                          for prompt in prompts]}
    # A graph buffers each step's whole answer: allow for a long generation.
    response = httpx.post(args.url, json=body, timeout=600)
    if response.status_code != 200:
        raise SystemExit(f"the graph answered {response.status_code}: {response.text}")
    for prompt, prediction in zip(prompts, response.json()["predictions"]):
        print(f"prompt: {prompt}")
        print(f"text: {prediction['text']}")
        print(f"finish_reason: {prediction['finish_reason']} confidence: {prediction['confidence']:.3f} "
              f"tokens: {prediction['prompt_tokens']} + {prediction['completion_tokens']}")


if __name__ == "__main__":
    main()
