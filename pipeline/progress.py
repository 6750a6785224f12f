"""Progress of a run, seen from the driver: files and requests done, audio hours, speed, ETA, errors.

The inference actors report every finished batch to a small actor (`ProgressCounter`, no CPU), fire and
forget; a thread in the driver asks it for its counts every few seconds and prints one line, refreshed in
place on a terminal and as a plain log line every LOG_INTERVAL_S otherwise (as under `ray job submit` or
cron), and a final line at the end.

It does not guess. Counts come from what the inference stage produced, request by request: a file is done
when every one of its requests (per task: its windows, its items, or its error row) has come out of it;
requests are "known" once the first request of their file reaches the stage (a file's requests are known only
after decoding and packing it), so the line says "requests done of requests known". The ETA comes from files
done against the plan's files. A request reported twice (a batch re-run after its actor died) is counted once.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TextIO


TERMINAL_INTERVAL_S = 1.0
LOG_INTERVAL_S = 15.0
REPLICA_SAMPLE_S = 5.0


def report(item_id: str, request_index: int, request_count: int, recording_s: float | None,
           rows: list[dict[str, Any]]) -> tuple:
    """What the inference stage did with one request row: `(item_id, request index, requests of the file, file
    seconds, rows written, {error stage: rows})`; `rows` are the output rows it wrote (one per task it answers,
    none that the output had already)."""
    stages = Counter(row["error_stage"] for row in rows if row.get("error_stage"))
    return item_id, request_index, request_count, recording_s or 0.0, len(rows), dict(stages)


class ProgressCounter:
    """The run's counts, fed by the inference actors (`add`) and read by the driver (`counts`).

    A file is done when every one of its requests (each task's windows or items, or its error rows) has come
    out of the inference stage; its audio counts then. Memory holds only the files that are partly done."""

    def __init__(self):
        self.open: dict[str, tuple[int, set[int]]] = {}  # item_id -> (request count, indices done)
        self.files_done = 0
        self.requests_known = 0
        self.requests_done = 0
        self.rows = 0
        self.audio_s = 0.0
        self.errors: Counter[str] = Counter()  # error rows by stage

    def add(self, reports: list[tuple]) -> None:
        for item_id, index, count, recording_s, written, errors in reports:
            if item_id not in self.open:
                self.open[item_id] = (count, set())
                self.requests_known += count
            total, done = self.open[item_id]
            if index in done:
                continue  # reported before (a batch re-run after its actor died)
            done.add(index)
            self.requests_done += 1
            self.rows += written
            self.errors.update(errors)
            if len(done) == total:
                del self.open[item_id]
                self.files_done += 1
                self.audio_s += recording_s

    def counts(self) -> dict[str, Any]:
        return {"files_done": self.files_done, "requests_known": self.requests_known,
                "requests_done": self.requests_done, "rows": self.rows, "audio_s": self.audio_s,
                "errors": dict(self.errors)}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Snapshot:
    files_todo: int
    elapsed_s: float
    files_done: int = 0
    requests_known: int = 0
    requests_done: int = 0
    rows: int = 0
    audio_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def audio_hours_per_hour(self) -> float:
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate files have been done so far; None before the first file is done."""
        if not self.files_done or self.elapsed_s <= 0:
            return None
        return max(self.files_todo - self.files_done, 0) * self.elapsed_s / self.files_done

    def line(self, final: str | None = None) -> str:
        """One line, most telling first (a terminal may cut its end); `final` ("done", "stopped") for the last."""
        percent = 100 * self.files_done / self.files_todo if self.files_todo else 100.0
        errors = sum(self.errors.values())
        by_stage = ", ".join(f"{stage} {n}" for stage, n in sorted(self.errors.items()))
        eta = self.eta_s
        parts = [
            f"{self.files_done}/{self.files_todo} files ({percent:.0f}%)",
            *([] if final else [f"ETA {_duration(eta) if eta is not None else '--'}"]),
            f"{errors} errors" + (f" ({by_stage})" if errors else ""),
            f"{self.audio_s / 3600:.3f} audio h",
            f"{self.audio_hours_per_hour:.1f} audio h/h",
            f"{self.requests_done} of {self.requests_known} known requests",
        ]
        if final:
            # Rows the engines answered; when stopped, the run's own line says how many of them reached the output.
            answered = " answered" if final == "stopped" else ""
            return (f"progress: {final}: " + ", ".join(parts)
                    + f", {self.rows} rows{answered} in {_duration(self.elapsed_s)}")
        return "progress: " + ", ".join(parts) + f", elapsed {_duration(self.elapsed_s)}"


class Progress:
    """Context manager around a run's dataset: owns the `ProgressCounter` actor (`counter`, to hand to the
    inference actors), prints to `stream` (None: prints nothing) and samples the Serve app's running replicas
    (`replica_seconds`, for the report's cost estimate). Needs Ray initialized."""

    def __init__(self, files_todo: int, *, stream: TextIO | None = None, app_name: str | None = None,
                 deployment_name: str | None = None, interval_s: float | None = None):
        self.files_todo = files_todo
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval_s = interval_s or (TERMINAL_INTERVAL_S if self.tty else LOG_INTERVAL_S)
        self.app = (app_name, deployment_name) if app_name and deployment_name else None
        # Seconds of running replicas, summed over the run (None: no app to watch).
        self.replica_seconds: float | None = 0.0 if self.app else None
        self.last = Snapshot(files_todo, 0.0)
        self.counter = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._printed_at = 0.0

    def __enter__(self) -> Progress:
        import ray

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node: a worker node lost mid-run must not take the counter (and the run) with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.counter = ray.remote(num_cpus=0, max_restarts=0)(ProgressCounter).options(
            scheduling_strategy=here).remote()
        self._start = self._printed_at = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        # The last batches' reports are sent without waiting: give them a moment to land before the final line.
        deadline = time.perf_counter() + (3.0 if exc_type is None and self.stream is not None else 0.0)
        while self.snapshot().files_done < self.files_todo and time.perf_counter() < deadline:
            time.sleep(0.1)
        self._print(self.last.line(final="done" if exc_type is None else "stopped"), final=True)
        ray.kill(self.counter)

    @property
    def mean_replicas(self) -> float | None:
        """Running replicas of the app, averaged over the time this watched it (None: no app, or no time)."""
        if self.replica_seconds is None or self.last.elapsed_s <= 0:
            return None
        return self.replica_seconds / self.last.elapsed_s

    def snapshot(self) -> Snapshot:
        """The counts now (the previous ones if the counter does not answer in time)."""
        import ray

        elapsed = time.perf_counter() - self._start
        try:
            counts = ray.get(self.counter.counts.remote(), timeout=10)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            self.last = replace(self.last, elapsed_s=elapsed)
        else:
            self.last = Snapshot(self.files_todo, elapsed, **counts)
        return self.last

    def _loop(self) -> None:
        replicas, sampled = (self._running_replicas(0), time.perf_counter()) if self.app else (0, 0.0)
        while not self._stop.wait(min(self.interval_s, REPLICA_SAMPLE_S)):
            now = time.perf_counter()
            if self.app and now - sampled >= REPLICA_SAMPLE_S:
                self.replica_seconds += replicas * (now - sampled)
                replicas, sampled = self._running_replicas(replicas), now
            if self.stream is not None and now - self._printed_at >= self.interval_s:
                self._print(self.snapshot().line())
        if self.app:
            self.replica_seconds += replicas * (time.perf_counter() - sampled)

    def _running_replicas(self, previous: int) -> int:
        from ray import serve

        try:
            app = serve.status().applications[self.app[0]]
            return int(app.deployments[self.app[1]].replica_states.get("RUNNING", 0))
        except Exception:  # noqa: BLE001 - a sample missed is not worth failing the run for
            return previous

    def _print(self, line: str, final: bool = False) -> None:
        if self.stream is None:
            return
        self._printed_at = time.perf_counter()
        if self.tty:  # rewrite the line in place, cut to the terminal's width so it never wraps; the final one stays
            if not final:
                line = line[:shutil.get_terminal_size().columns - 1]
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
            self.stream.write(f"{stamp} {line}\n")
        self.stream.flush()
