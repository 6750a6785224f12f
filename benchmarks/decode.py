"""Decode speed (issue 8): `contract.audio.decode` vs `librosa.load(sr=16000, mono=True)` on one core.

What it measures: audio seconds decoded to 16 kHz mono float32 per CPU second, for the same files, in the
same run, interleaved (ours, librosa, ffmpeg CLI for each file, repeated; the median CPU time per file and
decoder is kept). CPU time is process CPU time (user + sys, every thread) for the in-process decoders and
the children's rusage for the ffmpeg CLI, so other load on the shared machine barely moves it. The process
is pinned to one core and BLAS/OpenMP pools are set to one thread.

Files: a ~3-minute programme made from the sample clips (samples/audio, concatenated and repeated), written
with ffmpeg as the formats users actually have: WAV (16-bit, 44.1 kHz stereo), FLAC (44.1 kHz stereo),
MP3 (128 kbit/s, 44.1 kHz stereo) and Opus (48 kHz stereo, 64 kbit/s, in Ogg). Every decoder must
resample to 16 kHz and downmix; all three resample with a high-quality resampler (ours and librosa:
soxr "HQ"; ffmpeg CLI: its default swresample).

Our time includes reading the file's bytes (the pipeline reads bytes, then decodes); librosa's includes its
own file I/O. The ffmpeg CLI figure (`ffmpeg -i f -ac 1 -ar 16000 -f f32le -`, process start-up included)
is context only.

Goal: ours/librosa >= 1.3. The last line, `ratio=`, is total audio seconds / total CPU seconds over all
four files for ours, divided by the same for librosa (equal audio per format, so it is the throughput on a
corpus that holds the four formats in equal amounts). The geometric mean of the per-format ratios is
printed too.

    .venv/bin/python benchmarks/decode.py
"""

from __future__ import annotations

import os

# One thread everywhere, before numpy / librosa import their pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = ROOT / "samples" / "audio"
TARGET_S = 180.0  # length of each test file
REPEATS = 5

FORMATS = {
    # name: (file name, ffmpeg encoder options)
    "wav": ("programme.wav", ["-c:a", "pcm_s16le", "-ar", "44100", "-ac", "2"]),
    "flac": ("programme.flac", ["-c:a", "flac", "-ar", "44100", "-ac", "2"]),
    "mp3": ("programme.mp3", ["-c:a", "libmp3lame", "-b:a", "128k", "-ar", "44100", "-ac", "2"]),
    "opus": ("programme.opus", ["-c:a", "libopus", "-b:a", "64k", "-ar", "48000", "-ac", "2"]),
}


def make_files(tmp: Path) -> dict[str, Path]:
    """A ~3-minute 44.1 kHz stereo master from the sample clips, then one file per format."""
    clips = sorted(p for p in SAMPLES.iterdir() if p.is_file())
    listing = tmp / "clips.txt"
    # Normalise every clip to 44.1 kHz stereo WAV first, then concatenate them until TARGET_S is reached.
    parts = []
    for i, clip in enumerate(clips):
        out = tmp / f"clip{i}.wav"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(clip), "-ar", "44100", "-ac", "2",
                        "-c:a", "pcm_s16le", str(out)], check=True)
        parts.append(out)
    lines, total = [], 0.0
    while total < TARGET_S:
        for p in parts:
            lines.append(f"file '{p}'")
            total += (p.stat().st_size - 44) / (44100 * 4)
            if total >= TARGET_S:
                break
    listing.write_text("\n".join(lines) + "\n")
    master = tmp / "master.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-t", str(TARGET_S), "-c:a", "pcm_s16le", str(master)], check=True)
    files = {}
    for name, (fname, opts) in FORMATS.items():
        out = tmp / fname
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(master), *opts, str(out)], check=True)
        files[name] = out
    return files


def cpu_now() -> float:
    return time.process_time()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def decode_ours(path: Path):
    from contract.audio import decode

    return decode(path.read_bytes())


def decode_librosa(path: Path):
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # audioread fallback warnings, if any
        y, _ = librosa.load(str(path), sr=16000, mono=True)
    return y


def decode_ffmpeg(path: Path) -> int:
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-ac", "1", "-ar", "16000",
                          "-f", "f32le", "-"], check=True, capture_output=True).stdout
    return len(out) // 4


def main() -> None:
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core (children inherit it)
        pinned = f"pinned to CPU {sorted(os.sched_getaffinity(0))[0]}"
    except (AttributeError, OSError):
        pinned = "not pinned"
    import librosa
    import numpy as np
    import soundfile

    from contract import audio as ours_mod

    print(f"librosa {librosa.__version__} (soundfile {soundfile.__version__}, libsndfile "
          f"{soundfile.__libsndfile_version__}), numpy {np.__version__}; {pinned}; {REPEATS} repeats, median")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmpdir:
        files = make_files(Path(tmpdir))
        # Warm up imports and caches (PyAV import, librosa's lazy modules, the page cache).
        for path in files.values():
            decode_ours(path), decode_librosa(path), decode_ffmpeg(path)

        times = {name: {"ours": [], "librosa": [], "ffmpeg": []} for name in files}
        walls = {name: {"ours": [], "librosa": [], "ffmpeg": []} for name in files}
        lengths: dict[str, dict[str, int]] = {name: {} for name in files}
        for _ in range(REPEATS):
            for name, path in files.items():
                for decoder, fn, clock in (("ours", decode_ours, cpu_now), ("librosa", decode_librosa, cpu_now),
                                           ("ffmpeg", decode_ffmpeg, children_cpu)):
                    w0, c0 = time.perf_counter(), clock()
                    result = fn(path)
                    c1, w1 = clock(), time.perf_counter()
                    times[name][decoder].append(c1 - c0)
                    walls[name][decoder].append(w1 - w0)
                    lengths[name][decoder] = result if isinstance(result, int) else len(result)

        print(f"\n{'format':6} {'size MB':>8} {'audio s':>8} | {'ours':>16} {'librosa':>16} {'ffmpeg CLI':>16} |"
              f" {'ours/librosa':>12} {'ours/ffmpeg':>11}")
        print(f"{'':6} {'':>8} {'':>8} | {'audio s/CPU s':>16} {'audio s/CPU s':>16} {'audio s/CPU s':>16} |")
        totals = {"ours": 0.0, "librosa": 0.0, "ffmpeg": 0.0}
        total_audio = 0.0
        per_format = []
        for name, path in files.items():
            audio_s = lengths[name]["ours"] / ours_mod.SAMPLE_RATE
            total_audio += audio_s
            med = {d: statistics.median(t) for d, t in times[name].items()}
            for d in totals:
                totals[d] += med[d]
            speed = {d: audio_s / med[d] for d in med}
            per_format.append(speed["ours"] / speed["librosa"])
            print(f"{name:6} {path.stat().st_size / 1e6:8.2f} {audio_s:8.1f} | {speed['ours']:16.0f} "
                  f"{speed['librosa']:16.0f} {speed['ffmpeg']:16.0f} | {speed['ours'] / speed['librosa']:12.2f} "
                  f"{speed['ours'] / speed['ffmpeg']:11.2f}")
        print("\nsamples out (ours / librosa / ffmpeg):",
              ", ".join(f"{n}: {l['ours']}/{l['librosa']}/{l['ffmpeg']}" for n, l in lengths.items()))
        print("median CPU s per file (ours / librosa / ffmpeg):",
              ", ".join(f"{n}: " + "/".join(f"{statistics.median(times[n][d]):.3f}" for d in ("ours", "librosa",
                                                                                             "ffmpeg"))
                        for n in files))
        print("median wall s per file (ours / librosa / ffmpeg):",
              ", ".join(f"{n}: " + "/".join(f"{statistics.median(walls[n][d]):.3f}" for d in ("ours", "librosa",
                                                                                              "ffmpeg"))
                        for n in files))
        overall = {d: total_audio / totals[d] for d in totals}
        geomean = math.exp(sum(math.log(r) for r in per_format) / len(per_format))
        print(f"\nall four files: {total_audio:.0f} s of audio; ours {overall['ours']:.0f}, librosa "
              f"{overall['librosa']:.0f}, ffmpeg CLI {overall['ffmpeg']:.0f} audio s per CPU s")
        print(f"ours/librosa: total audio s / total CPU s {overall['ours'] / overall['librosa']:.2f}; "
              f"geometric mean of per-format ratios {geomean:.2f} (goal 1.3)")
        print(f"ratio={overall['ours'] / overall['librosa']:.3f}")


if __name__ == "__main__":
    main()
