"""The job's configuration: pydantic models loaded from YAML, overridable with `--set key=value`.

Every model forbids unknown keys, so a typo is an error naming the field before any cluster work starts.
Engine options pass through as a dict (`engine.engine_kwargs`) instead of mirroring vLLM's flags.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.answers import answer_schema
from contract.times import parse_time

AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "oga", "opus", "m4a", "aac", "webm", "mp4")


class ConfigError(Exception):
    """A config that cannot be used; its message is one line meant for the user."""


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(Base):
    uri: str = Field("samples/audio", description="Folder, prefix or URI (any fsspec protocol) listed recursively.")
    extensions: list[str] = Field(list(AUDIO_EXTENSIONS), description="File extensions taken as audio, any case.")
    glob: str | None = Field(None, description="Only paths below `uri` matching this pattern (`2026-*/*.wav`).")
    since: str | None = Field(
        None, description="Only files modified since: an ISO date/time, or a duration back from now (36h, 7d)."
    )
    max_size_mb: float | None = Field(None, gt=0, description="Larger files become error rows without download.")
    manifest: str | None = Field(
        None, description="A JSONL, CSV or Parquet table naming the audio (one row per file) instead of listing uri."
    )
    uri_column: str = Field("audio", description="The manifest's column holding each file's URI.")
    format: Literal["files", "webdataset", "parquet"] = Field(
        "files", description="How `uri` holds the audio: one file per recording (files), WebDataset .tar shards "
        "(webdataset: the members sharing a key are one sample), or .parquet shards with audio bytes (parquet)."
    )
    audio_column: str = Field(
        "audio", description="parquet: the column holding each row's audio, a {bytes, path} struct (what Hugging "
        "Face datasets writes for its Audio feature) or plain binary."
    )
    id_column: str | None = Field(
        None, description="parquet: a column naming each row (its key in `source_uri`); default: the row number."
    )
    audio_member: str | None = Field(
        None, description="webdataset: the audio member's extension to take when a sample has several (flac); "
        "default: the first of `extensions` the sample has."
    )

    @field_validator("since")
    @classmethod
    def _since_parses(cls, value: str | None) -> str | None:
        if value is not None:
            since_time(value)
        return value

    @model_validator(mode="after")
    def _format_fits(self) -> InputConfig:
        if self.format != "files" and self.manifest:
            raise ValueError(f"format {self.format!r} reads the shards under input.uri; a manifest names files "
                             "(format: files)")
        return self

    def since_time(self) -> datetime | None:
        return since_time(self.since) if self.since else None


def since_time(text: str, now: datetime | None = None) -> datetime:
    """`2026-11-21`, `2026-11-21T02:00:00Z` (UTC unless a zone is given), or `36h` / `7d` / `90m` ago."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    text = str(text).strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return (now or datetime.now(timezone.utc)) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO date/time nor a duration like 36h or 7d") from None


class StorageConfig(Base):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, R2); default: AWS_ENDPOINT_URL, else AWS."
    )
    anonymous: bool = Field(False, description="Read public buckets without credentials.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra fsspec filesystem options (no secrets: use the standard chain)."
    )


class OutputConfig(Base):
    uri: str = Field("output/local", description="Folder or URI where the Parquet dataset is written.")
    rows_per_file: int = Field(
        256, ge=1, description="Rows gathered per output file; fewer means less work redone after a crash."
    )
    lease_stale_s: float = Field(
        120.0, gt=0, description="A run renews its lease on the output (`_lease.json`) every quarter of this; a "
        "lease not renewed for this long belonged to a dead run and is taken over."
    )
    lease_wait_s: float = Field(
        0.0, ge=0, description="How long a run waits for another run's lease on the output to be given back or go "
        "stale before it stops; 0: stop at once."
    )


class AudioConfig(Base):
    max_duration_s: float = Field(
        3 * 3600.0, gt=0, description="Longest audio decoded per file (bounds memory); a longer file is an error row."
    )


class SegmentConfig(Base):
    max_s: float | None = Field(
        None, gt=0, description="Longest audio item sent to the model; default: the model family's limit."
    )
    search_s: float = Field(5.0, ge=0, description="How far before the limit to look for a quiet point to cut at.")


class SamplingConfig(Base):
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (reference client: 0.7).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(1.0, gt=0, description="Repetition penalty (reference client: 1.0).")
    max_tokens: int = Field(4096, gt=0, description="Most tokens generated; clamped to what the context leaves.")
    seed: int | None = Field(
        None, description="Sampling seed, for reproducible runs: each request draws from its own seed, made from this "
        "one and the request's id (one seed for all would draw the same numbers for every request).")

    def for_request(self, request_id: str) -> SamplingConfig:
        """This sampling for one request of the task. A seed becomes the request's own, a stable hash of it and
        the request's id: a run is reproducible and a request sent again draws the same numbers, while the
        task's requests no longer all draw the same ones (which correlated their samples: lengths, choices)."""
        if self.seed is None:
            return self
        digest = hashlib.blake2b(f"{self.seed}/{request_id}".encode(), digest_size=4).digest()
        return self.model_copy(update={"seed": int.from_bytes(digest, "big") >> 1})  # 31 bits: any engine's int


class TaskConfig(Base):
    name: str = Field(description="Task name, written to the `task` column.")
    question: str | None = Field(
        None, description="The question asked about each audio item; required unless the model family answers no "
        "questions (whisper transcribes whatever it is asked: a question there is ignored, and the job says so)."
    )
    system: str | None = Field(None, description="System prompt (context hints go here).")
    prefill: Literal["think", "forced", "off"] = Field(
        "think", description="How the answer starts: think (model reasons), forced (`<think>\\nOkay,`), off."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling settings.")
    answer: dict[str, Any] | list[str] | None = Field(
        None, description="The answer's shape: a JSON Schema, or a list of labels (the answer is one of them). The "
        "model reasons freely, then answers under it; an answer that does not hold to it is an AnswerInvalid row."
    )

    @field_validator("answer")
    @classmethod
    def _answer_is_a_schema(cls, value: dict[str, Any] | list[str] | None) -> dict[str, Any] | list[str] | None:
        if value is not None:
            answer_schema(value)
        return value

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema every answer of this task holds to, or None for free text."""
        return answer_schema(self.answer) if self.answer is not None else None
    scope: Literal["recording", "item"] = Field(
        "recording", description="recording: the model hears the whole file (its items packed into as few "
        "requests as the engine's context takes; a file needing several is answered once more from their answers), "
        "one answer row per file; item: one request and one row per item (at most the family's item length)."
    )


class OpenAIServerConfig(Base):
    """The running OpenAI-compatible server that the `openai` engine calls (vLLM's server, this project's app)."""

    base_url: str = Field(description="The server's base URL, /v1 included, e.g. http://127.0.0.1:9999/v1.")
    model: str | None = Field(None, description="Model name the server serves; default: engine.model_name.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the server's API key, sent as a bearer token; unset: none."
    )
    max_concurrency: int = Field(
        64, ge=1, description="Requests in flight to the server per replica; also the connection pool size."
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Longest wait for one attempt's answer; a request that times out becomes a "
        "retryable error row."
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Longest wait to open a connection.")
    max_retries: int = Field(
        5, ge=0, description="Retries of a request answered 429 or 5xx, or that could not connect."
    )
    backoff_s: float = Field(
        1.0, gt=0, description="First retry delay; doubles each retry (with jitter) up to 60 s; Retry-After wins."
    )


class EngineConfig(Base):
    kind: Literal["whisper", "vllm", "openai"] = Field("whisper", description="Which engine each replica holds.")
    family: str = Field("whisper", description="Model family: prompt format, item limit, output split.")
    model_name: str = Field("whisper-tiny.en", description="Name written to the `model` column and served.")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed through to the engine (vLLM AsyncEngineArgs, faster-whisper)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables the engine sets in its replica before importing its library "
        "(e.g. VLLM_ENABLE_V1_MULTIPROCESSING: '0' for vLLM on CPU).",
    )
    openai: OpenAIServerConfig | None = Field(
        None, description="For kind openai: the running OpenAI-compatible server each replica calls."
    )

    @model_validator(mode="after")
    def _family_known(self) -> EngineConfig:
        # Imported here: contract.formats is light (no engine), but config must load without it first.
        from contract.formats import FAMILIES

        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.kind == "openai" and self.openai is None:
            raise ValueError("kind openai needs engine.openai.base_url: the server to call")
        return self


class AutoscalingConfig(Base):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests in flight per replica to aim for (each pipeline call is one request)."
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="Wait before adding replicas.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Wait before removing replicas.")


class HTTPConfig(Base):
    """The app's OpenAI-compatible HTTP routes (host and port belong to Serve: `serve run`, RayService)."""

    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key callers must send as `Authorization: Bearer "
        "<key>`; unset: no key. Named but unset in the replica's environment: the app does not start."
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above); base64 is 4/3 of the audio."
    )
    audio_url_protocols: list[str] = Field(
        default_factory=list, description="fsspec protocols (s3, gs, ...) an audio_url may name besides data: URIs, "
        "read with the replica's credentials; empty: data: URIs only. Never list `file` outside tests."
    )


class DeploymentConfig(Base):
    app_name: str = Field("audio-reasoning", description="Serve application name.")
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is not set.")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscale replicas across nodes.")
    max_ongoing_requests: int = Field(
        4, ge=1, description="Requests a replica takes at once (the engine's own batch and its queue); more wait "
        "in the callers. Set it above the engine's max_num_seqs, so a finished sequence is replaced at once."
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs the replica actor holds.")
    gpus_per_replica: int = Field(0, ge=0, description="GPUs per replica (tensor parallel size), one bundle each.")
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between engine health checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="A health check slower than this fails.")
    request_timeout_s: float = Field(
        1800.0, gt=0, description="A request unanswered this long is cancelled and becomes a retryable error row."
    )
    stall_timeout_s: float = Field(
        900.0, gt=0, description="An engine holding requests that finishes none for this long fails its health "
        "check, and Serve replaces the replica."
    )
    reuse_running: bool = Field(False, description="Use an app of this name that is already running.")
    start_timeout_s: float = Field(
        1800.0, gt=0, description="An app the job starts must be running within this long (model load, GPU nodes "
        "joining), else the job stops with the engine's first error line; it never waits forever."
    )
    owner_check_s: float = Field(
        10.0, gt=0, description="How often the replicas of an app a job started check that the job still runs; "
        "once it does not (killed, `ray job stop`), they delete the app."
    )
    http: HTTPConfig = Field(default_factory=HTTPConfig, description="The OpenAI-compatible HTTP routes.")


class ResourcesConfig(Base):
    read_cpus: float = Field(0.25, gt=0, description="CPUs per listing/read task.")
    decode_cpus: float = Field(0.5, gt=0, description="CPUs per decode + segment task.")
    infer_cpus: float = Field(0.25, gt=0, description="CPUs per inference caller actor.")
    infer_actors: int = Field(1, ge=1, description="Inference caller actors.")
    batch_size: int = Field(8, ge=1, description="Request rows a caller actor takes from Ray Data at once.")
    requests_in_flight: int = Field(
        16, ge=1, description="Requests each caller actor keeps at the engines, each routed to a replica on its own "
        "and replaced the moment it is answered; callers hold rows for twice this many (decoded audio waiting)."
    )
    files_per_task: int = Field(4, ge=1, description="Files decoded per decode task.")
    attempts: int = Field(
        3, ge=1, description="Tries per request when its replica dies; a request failing this often is quarantined."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_concurrent_batches" in data:
            raise ValueError("max_concurrent_batches is gone: requests are sent one by one now; set "
                             "resources.requests_in_flight (requests per caller actor) instead")
        return data


class RayConfig(Base):
    address: str | None = Field(
        None, description="Ray cluster address; default: RAY_ADDRESS, else a new local cluster for the job alone."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local cluster started by the job.")


class ReportConfig(Base):
    enabled: bool = Field(True, description="Write report.json and report.html under <output>/_reports/ after a run.")
    gpu_hour_price: float | None = Field(
        None, ge=0, description="Price of one GPU-hour, for the report's cost estimate; unset: no cost shown."
    )
    currency: str = Field("USD", description="Currency of gpu_hour_price, as shown in the report.")


class Config(Base):
    input: InputConfig = Field(default_factory=InputConfig, description="Where the audio is.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where the Parquet goes.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Object-store access.")
    audio: AudioConfig = Field(default_factory=AudioConfig, description="Decoding limits.")
    segment: SegmentConfig = Field(default_factory=SegmentConfig, description="Cutting audio into items.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="The model engine.")
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig, description="The Serve app.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Ray Data resources.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Which Ray cluster.")
    report: ReportConfig = Field(default_factory=ReportConfig, description="The run report.")
    tasks: list[TaskConfig] = Field(
        default_factory=lambda: [TaskConfig(name="transcribe", question="Please transcribe the audio.")],
        min_length=1,
        description="Questions asked about every audio item; one output row per item, segment and task.",
    )

    @model_validator(mode="after")
    def _tasks_fit_the_model(self) -> Config:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        from contract.formats import get_format  # light, as in EngineConfig

        family = self.engine.family
        if get_format(family).answers_questions:
            unasked = [f"tasks[{i}] ({t.name})" for i, t in enumerate(self.tasks) if t.question is None]
            if unasked:
                raise ValueError(f"{', '.join(unasked)}: question is required: model family {family} answers the "
                                 "task's question")
        else:
            shaped = [f"tasks[{i}] ({t.name})" for i, t in enumerate(self.tasks) if t.answer is not None]
            if shaped:
                raise ValueError(f"{', '.join(shaped)}: answer needs a model that answers questions; {family} only "
                                 "transcribes (use a family such as step_audio_r1, or drop answer)")
        return self


def asks(tasks: list[TaskConfig], task: str | None = None, question: str | None = None) -> list[TaskConfig]:
    """What is asked of one item: every task, or only the one its manifest row names, with the row's own
    question in place of the task's when it has one."""
    chosen = [t for t in tasks if task is None or t.name == task]
    return [t.model_copy(update={"question": question}) for t in chosen] if question else chosen


def _parse_value(key: str, text: str) -> Any:
    """A `--set` value is YAML, so `--set resources.batch_size=4` gives an int and `x=[a,b]` a list."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: not a valid YAML value: {_yaml_problem(e)}") from None


def _yaml_problem(error: yaml.YAMLError, source: str | None = None, what: str = "") -> str:
    """What is wrong, and where: `file:line:column: ` (1-based) first when `source` names the file."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if source is None:
        return what + problem
    return f"{source}:{mark.line + 1}:{mark.column + 1}: {what}{problem}" if mark else f"{source}: {what}{problem}"


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[leaf] = _parse_value(key.strip(), value)


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field (typo?)"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: {field}: {message}{more}"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (default `configs/local.yaml`), apply `--set` overrides, validate it.

    Environment variables in the YAML (`${MODEL_PATH}`) are expanded, so secrets and mounts stay out of it.
    """
    path = Path(path) if path else Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(os.path.expandvars(text)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(e, str(path), "not valid YAML: ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        _apply_override(data, assignment)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, _blamed(e, str(path), overrides))) from None


def _blamed(error: ValidationError, path: str, overrides: list[str]) -> str:
    """Where the first error's value came from: the last `--set` of that field (or of a section holding it),
    else the file."""
    loc = [str(p) for p in error.errors()[0]["loc"]]
    for assignment in reversed(overrides):
        key = assignment.partition("=")[0].strip().split(".")
        if key == loc[:len(key)] or loc == key[:len(loc)]:
            return f"--set {assignment.partition('=')[0].strip()}"
    return path
