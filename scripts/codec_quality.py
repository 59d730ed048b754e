"""Scores each decoded WAV of examples/codec_sweep.rs against the reference with PESQ
(ITU-T P.862.2, wideband MOS-LQO, from the `pesq` package) and prints the trade-off table.

Usage: python3 scripts/codec_quality.py <decoded-dir> <sweep.csv>
"""
import csv
import sys
import wave

import numpy as np
from pesq import pesq
from scipy.signal import resample_poly


def read_16k(path):
    with wave.open(path, "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    # 24 kHz -> 16 kHz, the rate of wideband PESQ and of WhatsApp's audio band.
    return resample_poly(data, 2, 3) if rate == 24000 else data


def main():
    directory, sweep = sys.argv[1], sys.argv[2]
    references = {
        "": read_16k(f"{directory}/reference.wav"),
        "paused_": read_16k(f"{directory}/reference_paused.wav"),
    }
    rows = list(csv.DictReader(open(sweep)))
    best = None
    for row in rows:
        reference = references["paused_" if row["name"].startswith("paused_") else ""]
        degraded = read_16k(f"{directory}/{row['name']}.wav")
        n = min(len(reference), len(degraded))
        row["pesq"] = pesq(16000, reference[:n], degraded[:n], "wb")
        if not row["name"].startswith("paused_"):
            best = max(best or 0.0, row["pesq"])
    print("| setting | bitrate | complexity | band | PESQ-WB (MOS-LQO) | vs best | encode µs/frame | decode µs/frame | encode+decode, % of a core per call | kbit/s sent |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cost = (float(row["encode_us"]) + float(row["decode_us"])) * 50 / 1e6 * 100
        print(
            f"| {row['name']} | {int(row['bitrate']) // 1000}k | {row['complexity']} | {row['bandwidth']} | "
            f"{row['pesq']:.2f} | {row['pesq'] - best:+.2f} | {float(row['encode_us']):.1f} | "
            f"{float(row['decode_us']):.1f} | {cost:.2f} % | {row['kbps']} |"
        )


if __name__ == "__main__":
    main()
