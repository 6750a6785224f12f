"""The Serve app's OpenAI-compatible HTTP routes with the embedded whisper engine, on loopback: the official
openai client and raw HTTP, every audio format, streaming, and every error status a caller can cause.

One app serves the module. It requires an API key (from an environment variable set in the replica), takes
bodies up to 4 MiB, and may read `file://` audio URLs (object-store reads, without an object store)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from contract.audio import decode
from contract.config import load_config
from contract.messages import GenerationRequest
from tests.conftest import SAMPLES, serve_http_url, word_error_rate

APP = "test-openai-whisper"
KEY = "sk-whisper-test"
MODEL = "whisper-tiny.en"
MAX_BODY = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def whisper_app(ray_cluster):
    from ray import serve

    from deployments.app import application

    config = load_config(None, [f"deployment.app_name={APP}", "deployment.http.api_key_env=TEST_OPENAI_API_KEY",
                                f"deployment.http.max_body_bytes={MAX_BODY}",
                                "deployment.http.audio_url_protocols=[file]"])
    url = serve_http_url()
    actor = {"num_cpus": config.deployment.num_cpus, "runtime_env": {"env_vars": {"TEST_OPENAI_API_KEY": KEY}}}
    handle = serve.run(application(config, ray_actor_options=actor), name=APP, route_prefix=f"/{APP}")
    yield handle, f"{url}/{APP}"
    serve.delete(APP)


@pytest.fixture(scope="module")
def base(whisper_app) -> str:
    return whisper_app[1]


@pytest.fixture(scope="module")
def client(base):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_part(name: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64((SAMPLES / name).read_bytes()),
                                                   "format": name.rsplit(".", 1)[1]}}


def chat(*parts, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": list(parts)}], **fields}


def post(base: str, body, *, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, dict):
        kwargs["json"] = body
    else:
        kwargs["content"] = body
        headers["Content-Type"] = "application/json"
    kwargs.setdefault("timeout", 60)
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, **kwargs)


def test_openai_client_gets_a_transcript(client, transcripts):
    assert [m.id for m in client.models.list().data] == [MODEL]
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [audio_part("greeting.wav"),
                                                              {"type": "text", "text": "Transcribe the audio."}]}])
    choice = completion.choices[0]
    assert word_error_rate(transcripts["greeting.wav"], choice.message.content) <= 0.3
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.reasoning_content is None  # whisper does not reason
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_silence_is_an_empty_reply_marked_no_speech(client):
    """Over HTTP as in the pipeline: 5 s of silence is no words (not whisper's "you"), and says why."""
    wav = io.BytesIO()
    sf.write(wav, np.zeros(5 * 16000, np.float32), 16000, format="WAV")
    silence = {"type": "input_audio", "input_audio": {"data": b64(wav.getvalue()), "format": "wav"}}
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [silence]}])
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("", "no_speech")


def test_openai_client_streams(client, transcripts):
    stream = client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You transcribe."},
                  {"role": "user", "content": [audio_part("story.ogg")]}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert word_error_rate(transcripts["story.ogg"], text) <= 0.3
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("name", ["greeting.wav", "weather.flac", "meeting.mp3", "story.ogg", "note.m4a"])
def test_every_audio_format_over_raw_http(base, transcripts, name):
    response = post(base, chat(audio_part(name), {"type": "text", "text": "Transcribe."}, temperature=0,
                               max_tokens=200))
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert word_error_rate(transcripts[name], message["content"]) <= 0.35, message


def test_audio_longer_than_an_item_is_cut_by_the_server_and_heard_whole(base, transcripts):
    # lecture.wav is 39.6 s, over whisper's 30 s item: cut at a quiet point into two items, transcribed long-form.
    response = post(base, chat(audio_part("lecture.wav")), timeout=120)
    assert response.status_code == 200, response.text
    assert word_error_rate(transcripts["lecture.wav"], response.json()["choices"][0]["message"]["content"]) <= 0.3


def test_audio_url_data_uri_and_enabled_object_store(base, transcripts, tmp_path):
    data = (SAMPLES / "meeting.mp3").read_bytes()
    inline = post(base, chat({"type": "audio_url", "audio_url": {"url": f"data:audio/mpeg;base64,{b64(data)}"}}))
    assert inline.status_code == 200, inline.text
    assert word_error_rate(transcripts["meeting.mp3"], inline.json()["choices"][0]["message"]["content"]) <= 0.35
    # `file` is enabled for this app (deployment.http.audio_url_protocols); the replica reads the URL.
    by_url = post(base, chat({"type": "audio_url", "audio_url": {"url": (SAMPLES / "note.m4a").as_uri()}}))
    assert by_url.status_code == 200, by_url.text
    assert word_error_rate(transcripts["note.m4a"], by_url.json()["choices"][0]["message"]["content"]) <= 0.35
    # s3 is not enabled: refused without touching any bucket.
    s3 = post(base, chat({"type": "audio_url", "audio_url": {"url": "s3://bucket/clip.wav"}}))
    assert s3.status_code == 400 and "'s3' is not enabled" in s3.json()["error"]["message"]
    missing = post(base, chat({"type": "audio_url", "audio_url": {"url": (tmp_path / "gone.wav").as_uri()}}))
    assert missing.status_code == 400 and "cannot read audio_url" in missing.json()["error"]["message"]


def wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 16000), np.int16), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def audio(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}


ERRORS = {
    "undecodable audio": (chat(audio(b"RIFF not really a wave file at all")), 400, "invalid_audio",
                          "cannot decode the audio"),
    "empty audio": (chat(audio(b"")), 400, "invalid_audio", "cannot decode the audio: empty file"),
    "not base64": (chat({"type": "input_audio", "input_audio": {"data": "%%%not base64%%%"}}), 400,
                   "invalid_audio", "not valid base64"),
    "two items for whisper": (chat(audio(wav(1.0)), audio(wav(1.0))), 400, "request_rejected",
                              "one audio item per request"),
    "history": ({"model": MODEL, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                              {"role": "user", "content": "c"}]}, 400, "unsupported_conversation",
                "conversation history is not supported"),
    "unknown prefill": ({"model": MODEL, "messages": [{"role": "user", "content": [audio(wav(1.0))]},
                                                      {"role": "assistant", "content": "Sure:"}],
                         "continue_final_message": True, "add_generation_prompt": False}, 400,
                        "unsupported_prefill", "'Sure:'"),
    "not json": (b'{"model": "whisper-tiny.en", "messages": [', 400, "invalid_json", "not valid JSON"),
    "other model": (chat(audio(wav(1.0))) | {"model": "gpt-4o"}, 404, "model_not_found", "'gpt-4o' does not exist"),
    "negative temperature": (chat(audio(wav(1.0)), temperature=-1), 422, "invalid_field", "temperature: Input"),
    "no messages": ({"model": MODEL}, 422, "invalid_field", "messages: Field required"),
    "image part": (chat({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}), 422,
                   "invalid_field", "messages[0].content[0]: Input tag 'image_url'"),
    "two choices": (chat(audio(wav(1.0)), n=2), 422, "invalid_field", "n: Input should be less than or equal to 1"),
    "body over the limit": (chat(audio(b"\0" * MAX_BODY)), 413, "body_too_large", "max_body_bytes"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_openai_style_with_the_right_status(base, case):
    body, status, code, message = ERRORS[case]
    response = post(base, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text


def test_api_key(base):
    body = chat(audio(wav(1.0)))
    for key in (None, "sk-wrong"):
        response = post(base, body, key=key)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401
    # Probes need no key.
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    ready = httpx.get(f"{base}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json()["model"] == MODEL


def test_openai_client_errors(base):
    import openai

    with pytest.raises(openai.BadRequestError) as bad:
        openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [audio(b"ID3 but not an mp3")]}])
    assert "cannot decode the audio" in bad.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_the_handle_still_answers_the_pipeline(whisper_app, transcripts):
    handle, _ = whisper_app
    clip = decode((SAMPLES / "weather.flac").read_bytes())
    result = handle.generate_one.remote(GenerationRequest("r", [clip], "Transcribe.")).result(timeout_s=120)
    assert result.error_class is None
    assert word_error_rate(transcripts["weather.flac"], result.answer) <= 0.3
