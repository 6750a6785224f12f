"""The app's OpenAI-compatible HTTP face, as vLLM's server has it: `/v1/models`, `/v1/chat/completions`
(audio in `input_audio` or `audio_url` parts, streaming, reasoning beside the answer), health and readiness.

- `protocol`: the request body, response bodies and OpenAI-style errors (pydantic; no FastAPI, no Ray).
- `convert`: chat messages to a `GenerationRequest` (audio decoded with `contract.audio.decode`) and back, the
  prefill convention, streaming text split into reasoning and answer. The `openai` engine uses it too, so a
  request sent by that engine and received by these routes means the same thing on both sides.
- `routes`: the FastAPI app a replica serves (`EngineServer.__serve_build_asgi_app__`).
"""
