"""Scores what Chromium played of the AI's clip: each rendition (the greeting, the later one) is
found in the 48 kHz recording by cross-correlation with the 24 kHz reference near the onset the
page detected, both are resampled to 16 kHz, and the rendition is scored with wideband PESQ
(ITU-T P.862.2, MOS-LQO, PyPI `pesq`), as scripts/codec_quality.py scores the codec.

Usage: python3 score.py <reference.wav> <recording.wav> <onset> [<onset> ...]
(onsets in samples of the recording). Prints one JSON object: {"renditions": [{"start": <sample
of the recording, 48 kHz>, "correlation": <normalised peak>, "pesq": <MOS-LQO or null>}, ...]}.
"""
import json
import sys
import wave

import numpy as np
from pesq import pesq
from scipy.signal import correlate, resample_poly

# How far from the detected onset the clip's start is searched (the page's onset is where the
# audio got loud; the clip may start quieter).
SEARCH_S = 0.5
# Taken after the clip's length, so a rendition the jitter buffer stretched is still whole.
SLACK_S = 0.25


def read(path):
    with wave.open(path, "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    return rate, data


def to_16k(rate, data):
    if rate == 16000:
        return data
    if rate == 24000:
        return resample_poly(data, 2, 3)
    if rate == 48000:
        return resample_poly(data, 1, 3)
    raise ValueError(f"unsupported rate {rate}")


def rendition(reference, recording, onset):
    lo = max(0, onset - int(SEARCH_S * 16000))
    hi = min(len(recording), onset + len(reference) + int(SEARCH_S * 16000))
    window = recording[lo:hi]
    if len(window) < len(reference):
        return {"start": None, "correlation": None, "pesq": None}
    corr = correlate(window, reference, mode="valid", method="fft")
    lag = int(np.argmax(corr))
    start = lo + lag
    energy = np.sqrt(np.sum(reference**2) * np.sum(window[lag:lag + len(reference)] ** 2))
    degraded = recording[start:start + len(reference) + int(SLACK_S * 16000)]
    try:
        score = float(pesq(16000, reference, degraded, "wb"))
    except Exception:  # no utterance found, too short: no score rather than no report
        score = None
    return {
        "start": start * 3,
        "correlation": float(corr[lag] / energy) if energy > 0 else None,
        "pesq": score,
    }


def main():
    reference = to_16k(*read(sys.argv[1]))
    recording = to_16k(*read(sys.argv[2]))
    onsets = [int(o) // 3 for o in sys.argv[3:]]
    print(json.dumps({"renditions": [rendition(reference, recording, o) for o in onsets]}))


if __name__ == "__main__":
    main()
