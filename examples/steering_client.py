"""Steer a completion with token ids: the transformer's /tokenize gives the ids of a word, a
logit_bias of -100 bans them, and a frequency penalty discourages repeats. Prints the plain
completion, the banned ids, and the steered completion (the `openai` client and httpx).

    python examples/steering_client.py --url http://localhost:9001 --model llm-small --ban " the"
"""

from __future__ import annotations

import argparse

import httpx
from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:9001", help="the transformer's HTTP address")
    parser.add_argument("--model", default="llm-small", help="the served model's name")
    parser.add_argument("--prompt", default="The history of Python")
    parser.add_argument("--ban", default=None,
                        help="text whose tokens may not appear (default: the plain completion's first word)")
    parser.add_argument("--max_tokens", type=int, default=24)
    args = parser.parse_args()

    # The API key is not checked by the transformer; the client insists on one.
    client = OpenAI(base_url=f"{args.url}/openai/v1", api_key="unused")
    greedy = dict(model=args.model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0)
    plain = client.completions.create(**greedy).choices[0].text
    print("plain:", plain)

    ban = args.ban or plain.split()[0]
    # /tokenize gives the ids the completion route would send the model. A completion prompt's
    # ids include the special tokens the tokenizer adds (BOS), which must not be banned.
    with_ban = httpx.post(f"{args.url}/tokenize", json={"model": args.model, "prompt": ban}).json()["tokens"]
    special = httpx.post(f"{args.url}/tokenize", json={"model": args.model, "prompt": ""}).json()["tokens"]
    banned = [token for token in with_ban if token not in special]
    print("banned ids:", banned, f"({ban!r})")

    # OpenAI's logit_bias keys are token ids written as strings.
    steered = client.completions.create(**greedy, logit_bias={str(token): -100 for token in banned},
                                        frequency_penalty=0.5)
    print("steered:", steered.choices[0].text)


if __name__ == "__main__":
    main()
