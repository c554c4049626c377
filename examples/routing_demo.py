"""The router at work on `make serve`'s task models: questions from the held-out suite, easy and
hard, each sent as `model: "auto"` with the official `openai` client. For each, the answer, whether
it is right, which model wrote it and why (the x-route headers: the policy's score, a cascade
escalation), and at the end how many went to the large model.

    python examples/routing_demo.py --url http://localhost:8000 --questions 12
"""

from __future__ import annotations

import argparse

from openai import OpenAI

from task_models.skills import Split, held_out_items, is_correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8000", help="the router's HTTP address")
    parser.add_argument("--questions", type=int, default=12, help="how many (levels 1 to 4 in turn)")
    parser.add_argument("--seed", type=int, default=0, help="which questions of the held-out suite")
    args = parser.parse_args()

    # The API key is not checked by the router; the client insists on one.
    client = OpenAI(base_url=f"{args.url}/openai/v1", api_key="unused")
    items = sorted(held_out_items(Split.TEST, args.questions, args.seed), key=lambda item: item.level)
    right = to_large = 0
    for item in items:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": item.prompt}], max_tokens=48, temperature=0.0)
        answer = raw.parse().choices[0].message.content or ""
        correct = is_correct(item, answer)
        right += correct
        to_large += raw.headers["x-route"] == "large"
        escalated = f", escalated: {raw.headers['x-route-escalated']}" if "x-route-escalated" in raw.headers else ""
        score = raw.headers.get("x-route-score", "-")
        print(f"[level {item.level}, {item.skill}] {item.prompt}\n"
              f"    -> {answer!r} ({'right' if correct else f'wrong, expected {item.answer!r}'}; "
              f"{raw.headers['x-route']} model, score {score}{escalated})")
    print(f"{right} of {len(items)} right; {to_large} answered by the large model")


if __name__ == "__main__":
    main()
