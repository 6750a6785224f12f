"""The audio front end, as StepFun's fork computes it, and the longest item the encoder takes.

Mono float32 at 16 kHz; 479 zero samples appended; STFT with n_fft 400, hop 160, a periodic Hann window of
400, centred (reflect padding); the last frame dropped; power spectrum; librosa's Slaney mel filter bank
(128 bins, 0-8 kHz); log10 clamped at 1e-10; floored at the item's maximum - 8; then (x + 4) / 4.
L = (N + 479) // 160 frames for N samples.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
PAD = 479
# The encoder has 1500 positions after its stride-2 convolution: ceil(L / 2) <= 1500 means L <= 3000 frames,
# N <= 479 680 samples (29.98 s). Items of 29.98 s or more are refused before they reach the encoder.
MAX_FRAMES = 3000
MAX_SAMPLES = 479_680  # refused from here on


def num_frames(num_samples: int) -> int:
    return (num_samples + PAD) // HOP


def check_item(index: int, num_samples: int) -> None:
    """ValueError (a request error in vLLM, never a crash) for an item the encoder cannot take."""
    if num_samples >= MAX_SAMPLES:
        raise ValueError(
            f"audio item {index} is {num_samples / SAMPLE_RATE:.2f} s ({num_samples} samples at 16 kHz); "
            f"Step-Audio-R1's audio encoder takes items shorter than {MAX_SAMPLES / SAMPLE_RATE:.2f} s "
            f"(1500 positions): cut the audio into shorter items (the reference client uses 25 s)")
    if num_frames(num_samples) < 4:
        raise ValueError(f"audio item {index} is {num_samples} samples, too short to give an audio token")


@lru_cache(maxsize=4)
def mel_filters(n_mels: int):
    import librosa
    import torch

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels))


def log_mel(audio: np.ndarray, n_mels: int = 128):
    """(L, n_mels) float32 log-mel features of one mono 16 kHz item."""
    import torch

    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    samples = torch.nn.functional.pad(samples, (0, PAD))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(samples, N_FFT, HOP, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).t().contiguous()
