"""Scores the calls of `loadtest --loss-quality` with PESQ (ITU-T P.862.2, wideband MOS-LQO,
from the `pesq` package) and prints one row per loss condition: each direction against the
clip, aligned by cross-correlation, with the loss measured and the bridge's FEC figures.

Usage: python3 scripts/loss_calls.py <dir with clip.wav and calls.csv>
"""
import csv
import math
import sys

import numpy as np
from pesq import pesq
from scipy.signal import correlate

from codec_quality import read_16k


def aligned(reference, degraded):
    """The stretch of `degraded` that best matches `reference` (its length)."""
    if len(degraded) < len(reference):
        degraded = np.pad(degraded, (0, len(reference) - len(degraded)))
    scores = correlate(degraded, reference, mode="valid", method="fft")
    lag = int(np.argmax(np.abs(scores)))
    return degraded[lag:lag + len(reference)]


def score(reference, path):
    try:
        return pesq(16000, reference, aligned(reference, read_16k(path)), "wb")
    except Exception as err:  # silence or a failed alignment: no score
        print(f"{path}: {err}", file=sys.stderr)
        return math.nan


def mean_min(values):
    return f"{np.nanmean(values):.2f} ({np.nanmin(values):.2f})"


def main():
    directory = sys.argv[1]
    reference = read_16k(f"{directory}/clip.wav")
    rows = list(csv.DictReader(open(f"{directory}/calls.csv")))
    levels = {}
    for row in rows:
        prefix = f"{directory}/{row['level']}_{row['call']}"
        for what in ("uplink", "greeting", "answer"):
            row[what] = score(reference, f"{prefix}_{what}.wav")
        levels.setdefault(row["level"], []).append(row)
    print("| loss (each direction) | calls | uplink PESQ-WB mean (min) | downlink answer mean (min) "
          "| downlink greeting mean (min) | lost up / down (measured) | bridge: uplink frames from FEC / concealed "
          "| downlink FEC on (calls) | answer packets with FEC | phone: downlink frames from FEC / concealed |")
    print("| --- |" + " --- |" * 9)
    total = lambda calls, key: sum(float(c[key]) for c in calls)
    for level, calls in levels.items():
        burst = float(calls[0]["mean_burst"])
        name = f"{calls[0]['loss_percent']} % " + ("random" if burst <= 1 else f"bursts of {burst:g}")
        up = total(calls, "up_lost") / max(total(calls, "up_sent"), 1)
        down_lost = total(calls, "down_lost")
        down = down_lost / max(down_lost + total(calls, "down_arrived"), 1)
        fec_on = sum(int(c["fec_on_at_answer"]) for c in calls)
        answer_fec = total(calls, "answer_fec_packets") / max(total(calls, "answer_packets"), 1)
        print(f"| {name} | {len(calls)} | {mean_min([c['uplink'] for c in calls])} "
              f"| {mean_min([c['answer'] for c in calls])} | {mean_min([c['greeting'] for c in calls])} "
              f"| {up:.1%} / {down:.1%} | {total(calls, 'bridge_fec_recovered'):.0f} / {total(calls, 'bridge_concealed'):.0f} "
              f"| {fec_on} of {len(calls)} | {answer_fec:.0%} "
              f"| {total(calls, 'phone_fec_recovered'):.0f} / {total(calls, 'phone_concealed'):.0f} |")


if __name__ == "__main__":
    main()
