"""The WebSocket generate protocol (docs/websocket.md) with the `websockets` client: a chat request
and a completion multiplexed on one connection, their deltas printed as they arrive, and a third
request cancelled after its first few deltas. Works against a transformer or the router's edge.

    python examples/websocket_client.py --url ws://localhost:9001 --model llm-small   # a transformer
    python examples/websocket_client.py --url ws://localhost:8000                     # the router (model auto)
"""

from __future__ import annotations

import argparse
import asyncio
import json

import websockets

PATH = "/ws/v1/generate"
DELTAS_BEFORE_CANCEL = 3


async def run(args: argparse.Namespace) -> None:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}
    if args.model:
        sampling["model"] = args.model
    async with websockets.connect(args.url + PATH, additional_headers=headers) as socket:
        await socket.send(json.dumps({"type": "generate", "id": "chat",
                                      "messages": [{"role": "user", "content": args.prompt}], **sampling}))
        await socket.send(json.dumps({"type": "generate", "id": "completion", "prompt": args.prompt, **sampling}))
        await socket.send(json.dumps({"type": "generate", "id": "cancelled", "prompt": args.prompt,
                                      **sampling, "max_tokens": None}))
        texts = await receive_until_all_end(socket, {"chat", "completion", "cancelled"})
    for request_id, text in texts.items():
        print(f"{request_id}: {text!r}")


async def receive_until_all_end(socket, in_flight: set[str]) -> dict[str, str]:
    """Print each message as it comes; cancel "cancelled" after a few deltas. Returns each text."""
    texts = {request_id: "" for request_id in in_flight}
    deltas = dict.fromkeys(in_flight, 0)
    while in_flight:
        message = json.loads(await socket.recv())
        print(json.dumps(message))
        request_id = message["id"]
        if message["type"] == "delta":
            texts[request_id] += message["text"]
            deltas[request_id] += 1
            if request_id == "cancelled" and deltas[request_id] == DELTAS_BEFORE_CANCEL:
                await socket.send(json.dumps({"type": "cancel", "id": request_id}))
        elif message["type"] in ("done", "error"):
            in_flight.discard(request_id)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:9001", help="ws:// address of a transformer or the router")
    parser.add_argument("--model", default=None, help="the model (unset: the transformer's own, the router's auto)")
    parser.add_argument("--api_key", default=None, help="the router's API key, if it requires one")
    parser.add_argument("--prompt", default="Write a haiku about paged attention.")
    parser.add_argument("--max_tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
