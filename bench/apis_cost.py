"""What the Messages and Responses translations cost: ``python -m bench.apis_cost``.

CPU time of the translation alone (no network, no router), the best of repeated runs (the
machine is shared; the minimum is the least disturbed figure): a small request translated
to chat completions and a 20-word answer translated back, per request; one content chunk
of a stream turned into the API's events and encoded, per event. Chat-completion
requests do not run any of it.
"""

from __future__ import annotations

import timeit

from router import SSEEvent, jsonlib

from plugins.anthropic_messages import MessagesAdapter
from plugins.anthropic_messages.response import MessageBody, MessageStream
from plugins.responses_api.request import load, to_chat
from plugins.responses_api.response import ResponseBody, ResponseStream
from plugins.responses_api.store import ResponseStore

MESSAGES = jsonlib.dumps({"model": "m", "max_tokens": 64, "system": "Be brief.",
                          "messages": [{"role": "user", "content": "Hello there, how are you?"}]})
RESPONSES = jsonlib.dumps({"model": "m", "input": "Hello there, how are you?", "instructions": "Be brief.",
                           "store": False})
ANSWER = jsonlib.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hello " * 20}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}})
CHUNK = SSEEvent(jsonlib.dumps({"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [
    {"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}))


def best_us(fn: object, number: int = 5000, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    adapter = MessagesAdapter()
    store = ResponseStore(None, 60.0, 10)

    def messages_body() -> None:
        adapter.request(MESSAGES)
        MessageBody([]).body(ANSWER, "application/json")

    def responses_body() -> None:
        chat, pending = to_chat(load(RESPONSES), store)
        jsonlib.dumps(chat)
        ResponseBody(pending, store).body(ANSWER, "application/json")

    anthropic_stream = MessageStream([])
    anthropic_stream.event(CHUNK)
    _, pending = to_chat(load(RESPONSES), store)
    responses_stream = ResponseStream(pending, store)
    responses_stream.event(CHUNK)
    print(f"messages   request + answer: {best_us(messages_body):6.1f} us")
    print(f"responses  request + answer: {best_us(responses_body):6.1f} us")
    print(f"messages   stream, per event: {best_us(lambda: [e.encode() for e in anthropic_stream.event(CHUNK)]):5.1f} us")
    print(f"responses  stream, per event: {best_us(lambda: [e.encode() for e in responses_stream.event(CHUNK)]):5.1f} us")


if __name__ == "__main__":
    main()
