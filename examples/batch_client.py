"""OpenAI's Batch API on the router with the official `openai` client: a JSONL file of chat
requests uploaded, a batch created on it (`model="auto"`: each line is routed as an online request
would be, on the router's spare capacity), polled until it ends, and its output file read.

    python examples/batch_client.py --url http://localhost:8000
"""

from __future__ import annotations

import argparse
import io
import json
import time

from openai import OpenAI

QUESTIONS = ["What is the capital of Australia?", "Name three primary colours.",
             "Write a Python function that reverses a string, then explain it step by step."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8000", help="the router's HTTP address")
    parser.add_argument("--api_key", default="unused", help="a tenant's key, when the router has tenants")
    parser.add_argument("--model", default="auto", help="auto (the router chooses per line) or a target's model")
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--completion_window", default="24h",
                        help="24h as OpenAI; the router also takes <n>s|m|h|d up to 7d")
    args = parser.parse_args()

    client = OpenAI(base_url=f"{args.url}/openai/v1", api_key=args.api_key)
    lines = [{"custom_id": f"question-{index}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": args.model, "messages": [{"role": "user", "content": question}],
                       "max_tokens": args.max_tokens}}
             for index, question in enumerate(QUESTIONS)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    input_file = client.files.create(file=("questions.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(input_file_id=input_file.id, endpoint="/v1/chat/completions",
                                  completion_window=args.completion_window)
    print("batch:", batch.id, batch.status)

    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(1)
        batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        print(f"  {batch.status}: {counts.completed} completed, {counts.failed} failed of {counts.total}")

    if batch.errors:
        for error in batch.errors.data:
            print(f"line {error.line}: {error.code}: {error.message}")
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is None:
            continue
        for text in client.files.content(file_id).text.splitlines():
            line = json.loads(text)
            if line["error"] is not None:
                print(f"{line['custom_id']}: {line['error']['code']}: {line['error']['message']}")
            elif line["response"]["status_code"] != 200:
                print(f"{line['custom_id']}: {line['response']['status_code']}: {line['response']['body']}")
            else:
                answer = line["response"]["body"]
                print(f"{line['custom_id']} ({answer['model']}): {answer['choices'][0]['message']['content']!r}")
    client.files.delete(input_file.id)


if __name__ == "__main__":
    main()
