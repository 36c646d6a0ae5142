"""What thinking separation costs per event and per body: ``python -m bench.reasoning_cost``.

CPU time of the transform path alone (no network), the best of repeated runs (the
machine is shared; the minimum is the least disturbed figure):

- a plain stream (no tag): the SSE splitter by itself (what any transform costs), then
  splitter + ``StreamTransform`` with ``parser: auto`` (after the first words it passes
  events on as they came);
- a thinking stream: every event parsed and re-encoded;
- a whole body without a tag (byte scan only) and with one (parse, split, re-serialize).

``parser: none`` has no transform at all: the relay writes the backend's chunks as they
come (nothing here to measure).
"""

from __future__ import annotations

import timeit

from plugins.reasoning.answers import AnswerTransform
from plugins.reasoning.stream import StreamTransform
from router import ReasoningFormat, SSESplitter, jsonlib


def _stream(pieces: list[str]) -> list[bytes]:
    chunks = []
    for i, piece in enumerate(pieces):
        chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        chunks.append(b"data: " + jsonlib.dumps(chunk) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _per_event_us(chunks: list[bytes], with_transform: bool, rounds: int = 200) -> float:
    def run() -> None:
        splitter = SSESplitter()
        transform = StreamTransform(ReasoningFormat(), None) if with_transform else None
        for chunk in chunks:
            for event in splitter.feed(chunk):
                if transform is not None:
                    for out in transform.event(event):
                        out.encode()
                else:
                    event.encode()

    times = timeit.repeat(run, number=1, repeat=rounds)
    return min(times) / len(chunks) * 1e6


def _body_us(body: bytes, rounds: int = 2000) -> float:
    transform = AnswerTransform(ReasoningFormat(), None)
    times = timeit.repeat(lambda: transform.body(body, "application/json"), number=1, repeat=rounds)
    return min(times) * 1e6


def main() -> None:
    words = [f" word{i}" for i in range(500)]
    plain = _stream(["Hello", *words])
    thinking = _stream(["<think>", *words[:250], "</think>", *words[250:]])
    print(f"plain stream, splitter only:          {_per_event_us(plain, False):6.2f} µs/event")
    print(f"plain stream, splitter + auto:        {_per_event_us(plain, True):6.2f} µs/event")
    print(f"thinking stream, splitter + auto:     {_per_event_us(thinking, True):6.2f} µs/event")
    answer = {"id": "x", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 500, "total_tokens": 505}}
    plain_body = jsonlib.dumps(answer)
    answer["choices"][0]["message"]["content"] = "<think>" + "".join(words[:250]) + "</think>" + "".join(words[250:])
    think_body = jsonlib.dumps(answer)
    print(f"plain body ({len(plain_body)} B), auto:          {_body_us(plain_body):6.2f} µs")
    print(f"thinking body ({len(think_body)} B), auto:       {_body_us(think_body):6.2f} µs")


if __name__ == "__main__":
    main()
