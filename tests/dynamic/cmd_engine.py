"""A small OpenAI-compatible server for the dynamic provider's ``cmd`` engine tests.

It records each start (argv, pid, time) as a JSON line in ``--record`` and answers chat
completions with who it is; a user message ``sleep:S`` makes it take S seconds (streamed
as pieces, so a test can hold a request open). ``--fail`` exits at once with a log line;
``--start-delay`` delays readiness (a slow load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    args, extra = parser.parse_known_args()
    with open(args.record, "a", encoding="utf-8") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "t": time.time()}) + "\n")
    if args.fail:
        print("cmd_engine: cannot load the weights (out of memory)", file=sys.stderr, flush=True)
        sys.exit(1)
    time.sleep(args.start_delay)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        last = body["messages"][-1]["content"]
        delay = float(last.split(":", 1)[1]) if last.startswith("sleep:") else 0.0
        text = f"served by {args.name} pid {os.getpid()} argv {' '.join(extra)}"
        fields = sorted(body)
        if not body.get("stream"):
            await asyncio.sleep(delay)
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "fields": fields,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = 10
        for i in range(pieces):
            await asyncio.sleep(delay / pieces)
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                     "choices": [{"index": 0, "delta": {"content": f"{i} "}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
