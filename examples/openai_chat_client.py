"""The transformer's OpenAI-compatible API with the official `openai` client: a chat completion,
then the same conversation streamed, text printed as it arrives.

    python examples/openai_chat_client.py --url http://localhost:9001 --model llm-small --prompt "Hello"
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:9001", help="the transformer's HTTP address")
    parser.add_argument("--model", default="llm-small", help="the served model's name")
    parser.add_argument("--prompt", default="Write a haiku about paged attention.")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # The API key is not checked by the transformer; the client insists on one.
    client = OpenAI(base_url=f"{args.url}/openai/v1", api_key="unused")
    messages = [{"role": "user", "content": args.prompt}]
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)

    completion = client.chat.completions.create(model=args.model, messages=messages, **sampling)
    print("whole:", completion.choices[0].message.content)
    print("finish_reason:", completion.choices[0].finish_reason, "usage:", completion.usage.model_dump())

    print("streamed: ", end="", flush=True)
    stream = client.chat.completions.create(model=args.model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **sampling)
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        elif chunk.usage:
            print("\nusage:", chunk.usage.model_dump())


if __name__ == "__main__":
    main()
