"""Tool calling on the transformer's chat route with the official `openai` client: the model is
made to call a weather function (`tool_choice` naming it), the call is run here, its answer goes
back as a `role: "tool"` message, and the model answers (`tool_choice: "auto"`: in text, or with
another call in its own format).

    python examples/tool_calling_client.py --url http://localhost:9001 --model llm-small
"""

from __future__ import annotations

import argparse
import json

from openai import OpenAI

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Today's weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Lima", "Oslo"]}},
                       "required": ["city"], "additionalProperties": False},
    },
}


def get_weather(city: str) -> str:
    return {"Paris": "sunny, 21 C", "Lima": "cloudy, 17 C", "Oslo": "snow, -3 C"}[city]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:9001", help="the transformer's HTTP address")
    parser.add_argument("--model", default="llm-small", help="the served model's name")
    parser.add_argument("--prompt", default="What is the weather in Oslo?")
    # Room for the call's JSON, which may be laid out with blanks.
    parser.add_argument("--max_tokens", type=int, default=300)
    args = parser.parse_args()

    # The API key is not checked by the transformer; the client insists on one.
    client = OpenAI(base_url=f"{args.url}/openai/v1", api_key="unused")
    messages = [{"role": "user", "content": args.prompt}]
    forced = client.chat.completions.create(
        model=args.model, messages=messages, tools=[WEATHER_TOOL], max_tokens=args.max_tokens, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if not forced.choices[0].message.tool_calls:
        raise SystemExit(f"no call within {args.max_tokens} tokens (finish_reason: {forced.choices[0].finish_reason})")
    call = forced.choices[0].message.tool_calls[0]
    print("call:", call.function.name, call.function.arguments, "finish_reason:", forced.choices[0].finish_reason)

    answer = get_weather(**json.loads(call.function.arguments))
    print("tool answer:", answer)
    messages += [forced.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": answer}]
    final = client.chat.completions.create(model=args.model, messages=messages, tools=[WEATHER_TOOL],
                                           max_tokens=args.max_tokens, temperature=0)
    message = final.choices[0].message
    print("answer:", message.content, message.tool_calls or "", "finish_reason:", final.choices[0].finish_reason)


if __name__ == "__main__":
    main()
