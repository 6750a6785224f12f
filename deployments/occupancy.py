"""How full each replica keeps its engine's batch: sampled on every replica, gathered per app, read for a window.

A thread in each replica (`OccupancySampler`) reads its engine's own count of running sequences
(`Engine.running`) against the engine's capacity (`Engine.concurrency`: vLLM's `max_num_seqs`, whisper's
workers) every SAMPLE_S, sets the `ray_audio_serve_engine_occupancy` gauge, and sends the sample, fire and
forget, to the app's `OccupancyLog`: one small named actor per app (no CPU, on the head node), which any replica
makes if it is missing. The log sums every replica's samples into one-second buckets, so replicas that come, go
or die leave their time in it, and answers for any window of its last RETENTION_S (`occupancy`; the pipeline's
driver asks through the app's handle, `EngineServer.occupancy`). A window that ends now is answered once every
replica still sampling has sent its samples up to that moment (half a second, at most WAIT_S), so a run's last
moments count too. An engine that cannot count (the openai engine) samples nothing: its occupancy is unknown
(None), never zero.

The log is detached, as no replica may take it with it, and ends itself once no sample came for IDLE_S (the app
was deleted or scaled to zero), so nothing outlives an app for long. Its name holds the app's, so apps never
mix. Times are wall-clock seconds (`time.time()`) on the replicas, as the driver's window is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import ray

from contract.messages import FULL_SHARE, Occupancy
from deployments.engines.base import Engine
from deployments.metrics import ReplicaMetrics

logger = logging.getLogger("ray.serve")

NAMESPACE = "audio-reasoning-occupancy"
SAMPLE_S = 0.5
LIVE_S = 4 * SAMPLE_S  # a replica whose last sample came longer ago than this is no longer waited for
WAIT_S = 5.0
IDLE_S = 600.0
RETENTION_S = 2 * 86400  # the log holds at most twice this: 8 MB of buckets
GROW_S = 3600  # buckets added at a time


def log_name(app_name: str) -> str:
    return f"{app_name}-occupancy"


class OccupancyLog:
    """The app's samples, summed over its replicas per wall-clock second: replica-seconds, occupied seconds
    (running / capacity x seconds) and seconds with the batch under FULL_SHARE of its capacity."""

    def __init__(self):
        self.first: int | None = None  # the second of bucket 0
        self.buckets = np.zeros((0, 3))
        self.last_sample = time.monotonic()
        self.latest: dict[str, tuple[float, float]] = {}  # replica -> its latest sample's time, when it came
        ray.get_runtime_context().current_actor.expire.remote()

    async def add(self, replica: str, at: float, seconds: float, share: float) -> None:
        """A replica's sample: its time, the seconds before it that it stands for, running / capacity. It is
        spread over the seconds it covers: one taken late (a busy replica's thread waits for the CPU) still fills
        each second it stood for."""
        self.last_sample = time.monotonic()
        self.latest[replica] = (at, self.last_sample)
        start = at - seconds
        while start < at:
            second = int(start)
            part = min(at, second + 1) - start
            i = self._bucket(second)
            if i is not None:
                self.buckets[i] += (part, part * share, part * (share < FULL_SHARE))
            start = second + 1

    async def window(self, start: float, end: float) -> Occupancy | None:
        """The figures over the whole seconds from `start` to `end` (wall clock); None if nothing was sampled."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and self._behind(end):
            await asyncio.sleep(SAMPLE_S / 5)
        if self.first is None:
            return None
        low, high = max(int(start) - self.first, 0), int(end) - self.first + 1
        replica_s, occupied, under = self.buckets[low:max(high, low)].sum(axis=0)
        if replica_s <= 0:
            return None
        return Occupancy(mean=float(occupied / replica_s), under_90=float(under / replica_s),
                         replica_s=float(replica_s))

    def _behind(self, end: float) -> bool:
        """Whether a replica still sampling has not sent its samples up to `end` yet."""
        now = time.monotonic()
        self.latest = {r: (at, came) for r, (at, came) in self.latest.items() if now - came < LIVE_S}
        return any(at < end for at, _ in self.latest.values())

    async def expire(self) -> None:
        """Runs from the start (the log calls it on itself) and ends the log once no sample came for IDLE_S."""
        while time.monotonic() - self.last_sample < IDLE_S:
            await asyncio.sleep(IDLE_S / 10)
        ray.actor.exit_actor()

    def _bucket(self, second: int) -> int | None:
        if self.first is None:
            self.first = second
        i = second - self.first
        if i < 0:  # before the log began (a replica's clock behind the others'): not kept
            return None
        if i >= 2 * RETENTION_S:
            drop = i - RETENTION_S
            self.buckets, self.first, i = self.buckets[drop:].copy(), self.first + drop, i - drop
        if i >= len(self.buckets):
            self.buckets = np.concatenate([self.buckets, np.zeros((i + GROW_S - len(self.buckets), 3))])
        return i


def occupancy_log(app_name: str) -> Any:
    """The app's log, made if missing (by whichever replica asks first)."""
    return ray.remote(OccupancyLog).options(
        name=log_name(app_name), namespace=NAMESPACE, get_if_exists=True, lifetime="detached", max_restarts=0,
        # On the head node, which outlives worker nodes: a lost node takes its replicas, not the app's history.
        # Outside the replica's placement group too, which it would otherwise join ("DEFAULT" escapes it).
        num_cpus=0, resources={"node:__internal_head__": 0.001}, scheduling_strategy="DEFAULT",
    ).remote()


async def occupancy(app_name: str, start: float, end: float) -> Occupancy | None:
    """The app's occupancy over a wall-clock window; None if no engine of it counted in that window."""
    try:
        log = ray.get_actor(log_name(app_name), namespace=NAMESPACE)
    except ValueError:  # no replica has sampled yet, or the log ended
        return None
    return await log.window.remote(start, end)


class OccupancySampler(threading.Thread):
    """In a replica: samples the engine's running count, sets the gauge, sends the samples to the app's log."""

    def __init__(self, engine: Engine, app_name: str, metrics: ReplicaMetrics):
        super().__init__(daemon=True, name="occupancy")
        self.engine, self.app_name, self.metrics = engine, app_name, metrics
        self.stop = threading.Event()
        self.replica = uuid.uuid4().hex  # names this sampler's samples in the log
        self._log: Any = None
        self._sent: Any = None  # the last sample sent, checked at the next one

    @classmethod
    def started(cls, engine: Engine, app_name: str, metrics: ReplicaMetrics) -> OccupancySampler | None:
        """A running sampler, or None for an engine that cannot count its running sequences."""
        if engine.running() is None or not engine.concurrency:
            return None
        sampler = cls(engine, app_name, metrics)
        sampler.start()
        return sampler

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.wait(SAMPLE_S):
            share = self.engine.running() / self.engine.concurrency
            now = time.monotonic()
            self.metrics.engine_occupancy(share)
            # Each sample stands for the time since the one before: a late wake-up still covers all of it.
            self._send(time.time(), now - last, share)
            last = now

    def _send(self, at: float, seconds: float, share: float) -> None:
        try:
            if self._sent is not None and ray.wait([self._sent], timeout=0)[0]:
                ray.get(self._sent)  # raises if the log is gone: make or find it again
            self._log = self._log or occupancy_log(self.app_name)
            self._sent = self._log.add.remote(self.replica, at, seconds, share)
        except Exception:  # noqa: BLE001 - this sample is lost; the next one looks the log up again
            logger.warning("occupancy sample of app %r not recorded", self.app_name, exc_info=True)
            self._log = self._sent = None
