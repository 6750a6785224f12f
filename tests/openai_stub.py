"""A stand-in OpenAI-compatible server on loopback (a real HTTP server in a thread, scripted per test), for the
`openai` engine's tests: a real vLLM server cannot be made to answer with what a test needs (errors, delays,
bad answers) on demand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import free_port

KEY = "sk-test-key"


class Stub:
    """A stand-in for an OpenAI-compatible server that answers from a script: (status, json body, headers,
    delay_s) per request,
    then `default`. It records what it received and the most requests it had in flight at once."""

    def __init__(self, key: str | None = KEY):
        self.script: deque = deque()
        self.received: list[tuple[dict, dict]] = []
        self.in_flight = self.max_in_flight = 0
        self.content = "Hello.</think>\nAn answer.<|EOT|>"
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request):
            if key is not None and request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            return {"object": "list", "data": [{"id": "served-model", "object": "model", "max_model_len": 16384}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.received.append((body, dict(request.headers)))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                status, payload, headers, delay = self.script.popleft() if self.script else (200, None, None, 0.0)
                await asyncio.sleep(delay)
            finally:
                self.in_flight -= 1
            if payload is None:
                payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}}
            return JSONResponse(payload, status_code=status, headers=headers)

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Stub:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "stub server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
