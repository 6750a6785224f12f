"""The `openai` engine: calls a running OpenAI-compatible server instead of holding a model (vLLM's server, e.g.
Step-Audio-R1's Docker recipe on port 9999, or another deployment of this project's app).

Each request becomes one `POST {base_url}/chat/completions` in the form StepFun's reference client uses: the
audio items as `input_audio` parts (lossless 32-bit float WAV, base64), then the question as a text part; the
format's stop tokens, `skip_special_tokens`, and the prefill as a final assistant message continued with
`continue_final_message` (`contract.formats.assistant_prefills`), so the server renders the prompt the
in-process engine renders. The answer is split into reasoning and answer by the server if it sends
`reasoning_content` (vLLM with a reasoning parser, this project's app), else here with the format's
`split_output`. Rows are the same as the in-process engines'.

Transport: one httpx connection pool per replica, at most `max_concurrency` requests in flight, a timeout per
attempt, retries with exponential backoff (and Retry-After) on 429, 5xx and connection errors. Outcomes:
- 400/413/422 from the server: the request can't be served as sent -> RequestRejected (a non-retryable row);
- no answer within `timeout_s`, or still 429/5xx after the retries -> RequestFailed (a retryable row);
- still unreachable after the retries, or 401/403/404 (a wrong key, URL or model name) -> the engine fails and
  the job stops, as with a dead in-process engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from contract.audio import wav_base64
from contract.config import EngineConfig
from contract.formats import assistant_prefills
from contract.messages import GenerationRequest, GenerationResult, ModelInfo
from contract.retry import Backoff, TryAgain, retry
from deployments.engines.base import (Engine, RequestFailed, RequestRejected,
                                      check_item_length, checked_prefill)

logger = logging.getLogger("ray.serve")

MAX_BACKOFF_S = 60.0
HEALTH_TIMEOUT_S = 5.0


class Unreachable(TryAgain):
    """The connection failed; the server may be restarting."""


class Overloaded(TryAgain):
    """429 or 5xx: the server is busy or failing for now."""


class ServerUnavailable(RuntimeError):
    """The server cannot be reached or refuses this client (wrong URL, key or model): the engine cannot serve."""


class OpenAIEngine(Engine):
    def __init__(self, config: EngineConfig):
        super().__init__(config)
        import httpx

        self._httpx = httpx
        self._server = server = config.openai
        self._prefills = assistant_prefills(self._format)
        self._model = server.model or config.model_name
        self._base_url = server.base_url.rstrip("/")
        self._headers: dict[str, str] = {}
        if server.api_key_env:
            key = os.environ.get(server.api_key_env)
            if not key:
                raise ServerUnavailable(f"engine.openai.api_key_env names {server.api_key_env}, which is not set in "
                                        "the replica's environment")
            self._headers["Authorization"] = f"Bearer {key}"
        self._timeout = httpx.Timeout(server.timeout_s, connect=server.connect_timeout_s, pool=None)
        # Made on first use, on the loop that serves requests (the replica's), not the one building the engine.
        self._client: Any = None
        self._slots: asyncio.Semaphore | None = None
        self.concurrency = server.max_concurrency
        self._check_model()

    def _check_model(self) -> None:
        """Fail at start, with a message that says why, if the server is unreachable, refuses the key, or does not
        serve the model; retried like requests, since a server may still be starting."""
        url = f"{self._base_url}/models"

        async def get() -> Any:
            async with self._httpx.AsyncClient(timeout=self._timeout, headers=self._headers) as client:
                return self._answer(await self._attempt(client.get(url), url), url)

        # The constructor is synchronous and may run on a thread that has an event loop: use a thread of its own.
        try:
            with ThreadPoolExecutor(1) as pool:
                response = pool.submit(asyncio.run, self._retrying(get, "model check")).result()
        except Unreachable as e:
            raise ServerUnavailable(f"cannot reach {url}: {e}") from e
        except (Overloaded, RequestFailed) as e:
            raise ServerUnavailable(str(e)) from e
        if response.status_code in (401, 403):
            raise ServerUnavailable(f"{url} refused the API key ({response.status_code}); check engine.openai."
                                    f"api_key_env ({self._server.api_key_env or 'unset'})")
        if response.status_code != 200:
            raise ServerUnavailable(f"{url} answered {response.status_code}: {_error_message(response)}; is "
                                    "engine.openai.base_url the server's /v1 URL?")
        cards = {m.get("id"): m for m in response.json().get("data", [])}
        if self._model not in cards:
            raise ServerUnavailable(f"the server at {self._base_url} serves {list(cards)}, not {self._model!r} "
                                    "(engine.openai.model, default engine.model_name)")
        # The request budget as the server states it (vLLM's server: max_model_len; this project's app also
        # max_audio_items), so the pipeline packs recordings to fit; unstated: no bound known here.
        card = cards[self._model]
        self._budget = {k: int(card[k]) for k in ("max_model_len", "max_audio_items") if card.get(k) is not None}
        logger.info("openai engine: %s serves %s", self._base_url, self._model)

    @property
    def info(self) -> ModelInfo:
        """As the base, with the budget the server states (`_check_model`)."""
        return replace(super().info, **self._budget)

    def _client_and_slots(self) -> tuple[Any, asyncio.Semaphore]:
        if self._client is None:
            n = self._server.max_concurrency
            limits = self._httpx.Limits(max_connections=n, max_keepalive_connections=n)
            self._client = self._httpx.AsyncClient(timeout=self._timeout, limits=limits, headers=self._headers)
            self._slots = asyncio.Semaphore(n)
        return self._client, self._slots

    def payload(self, request: GenerationRequest, mode: str) -> dict[str, Any]:
        """The chat completion request body for one GenerationRequest."""
        fmt = self._format
        content: list[dict[str, Any]] = [
            {"type": "input_audio", "input_audio": {"data": wav_base64(a), "format": "wav"}} for a in request.audio
        ]
        if request.question:
            content.append({"type": "text", "text": request.question})
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        s = request.sampling
        body: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "repetition_penalty": s.repetition_penalty,
            "skip_special_tokens": fmt.skip_special_tokens,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if request.answer_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": request.answer_schema, "strict": True}}
        if fmt.stop_token_ids:
            body["stop_token_ids"] = list(fmt.stop_token_ids)
        if fmt.stop:
            body["stop"] = list(fmt.stop)
        prefill = self._prefills[mode]
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if mode == "off" and fmt.prefills[0] != "off":
            # Templates with a thinking switch (Qwen3-style) read it; others ignore it.
            body["chat_template_kwargs"] = {"enable_thinking": False}
        return body

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        mode = checked_prefill(self._format, request.prefill)
        for i, a in enumerate(request.audio):
            check_item_length(self._format, i, len(a))
        body = await asyncio.to_thread(self.payload, request, mode)  # base64 of the audio: keep the loop free
        data = await self._post(body, request.request_id)
        return self._result(request, mode, data, started)

    async def _post(self, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        client, slots = self._client_and_slots()
        url = f"{self._base_url}/chat/completions"

        async def post() -> Any:
            async with slots:
                response = self._answer(await self._attempt(
                    client.post(url, json=body, headers={"X-Request-Id": request_id}), url), url)
            if response.status_code == 200:
                return response.json()
            message = _error_message(response)
            if response.status_code in (401, 403, 404):
                raise ServerUnavailable(f"{url} answered {response.status_code}: {message}")
            raise RequestRejected(f"server refused the request ({response.status_code}): {message}")

        try:
            return await self._retrying(post, f"request {request_id}")
        except Unreachable as e:
            raise ServerUnavailable(f"cannot reach {url} after {self._server.max_retries + 1} attempts: {e}") from e
        except Overloaded as e:
            raise RequestFailed(f"{e} after {self._server.max_retries + 1} attempts") from None

    async def _attempt(self, sent: Any, url: str) -> Any:
        """The response to one try; Unreachable if the connection failed, RequestFailed if no answer in time."""
        try:
            return await sent
        except (self._httpx.ConnectError, self._httpx.ConnectTimeout, self._httpx.RemoteProtocolError,
                self._httpx.ReadError, self._httpx.WriteError) as e:
            raise Unreachable(f"{type(e).__name__}: {e}") from e
        except self._httpx.TimeoutException as e:
            raise RequestFailed(f"no answer from {url} within engine.openai.timeout_s={self._server.timeout_s} s "
                                f"({type(e).__name__})") from None

    @staticmethod
    def _answer(response: Any, url: str) -> Any:
        """The response, or Overloaded for a 429 or 5xx that a later try may not get."""
        status = response.status_code
        if status == 429 or status >= 500:
            try:
                asked = float(response.headers.get("retry-after", ""))
            except ValueError:
                asked = None
            raise Overloaded(f"{url} answered {status}: {_error_message(response)}", asked)
        return response

    async def _retrying(self, call: Any, what: str) -> Any:
        """`call` with the configured retries (engine.openai.max_retries, backoff_s)."""
        tries = self._server.max_retries + 1

        def log(n: int, error: BaseException, pause: float) -> None:
            logger.warning("openai engine: %s: %s; retry %d/%d in %.1f s", what, error, n, tries - 1, pause)

        return await retry(call, tries=tries, backoff=Backoff(self._server.backoff_s, MAX_BACKOFF_S), on_retry=log)

    def _result(self, request: GenerationRequest, mode: str, data: dict[str, Any],
                started: float) -> GenerationResult:
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed(f"the server's answer has no choice: {str(data)[:200]}") from None
        content = message.get("content")
        reasoning = message.get("reasoning_content")
        if reasoning is None:
            reasoning = message.get("reasoning")
        finish_reason = choice.get("finish_reason")
        text = None
        if reasoning is not None:  # the server split it (a reasoning parser, or this project's app)
            answer, truncated = content, content is None
        else:
            text = content or ""
            parsed = self._format.split_output(text, mode)
            reasoning, answer, truncated = parsed.reasoning, parsed.answer, parsed.truncated
        usage = data.get("usage") or {}
        return GenerationResult(
            request_id=request.request_id,
            text=text,
            reasoning=reasoning,
            answer=answer,
            finish_reason=finish_reason,
            truncated=truncated or (finish_reason == "length" and not answer),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_s=time.perf_counter() - started,
        )

    async def check_health(self) -> None:
        """Unhealthy only if the server cannot be reached or answers 5xx; a slow answer means busy, not down."""
        client, _ = self._client_and_slots()
        url = f"{self._base_url}/models"
        try:
            response = await client.get(url, timeout=self._httpx.Timeout(HEALTH_TIMEOUT_S,
                                                                         connect=self._server.connect_timeout_s))
        except (self._httpx.ConnectError, self._httpx.ConnectTimeout) as e:
            raise ServerUnavailable(f"cannot reach {url}: {type(e).__name__}: {e}") from e
        except self._httpx.TimeoutException:
            return
        if response.status_code >= 500:
            raise ServerUnavailable(f"{url} answered {response.status_code}")

    async def shutdown(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _error_message(response: Any) -> str:
    """The server's error message (OpenAI-style JSON or text), short."""
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except Exception:
        message = None
    return str(message or response.text or response.reason_phrase)[:500]


ENGINE = OpenAIEngine
