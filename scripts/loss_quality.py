"""Scores each decoded WAV of examples/loss_sweep.rs against the reference with PESQ
(ITU-T P.862.2, wideband MOS-LQO, from the `pesq` package) and prints one row per setting,
one column per packet loss.

Usage: python3 scripts/loss_quality.py <out-dir> <sweep.csv>
"""
import csv
import sys

from pesq import pesq

from codec_quality import read_16k


def main():
    directory, sweep = sys.argv[1], sys.argv[2]
    reference = read_16k(f"{directory}/reference.wav")
    rows = list(csv.DictReader(open(sweep)))
    losses = sorted({int(row["loss_percent"]) for row in rows})
    table = {}
    for row in rows:
        degraded = read_16k(f"{directory}/{row['name']}_loss{row['loss_percent']}.wav")
        n = min(len(reference), len(degraded))
        score = pesq(16000, reference[:n], degraded[:n], "wb")
        table.setdefault(row["name"], {})[int(row["loss_percent"])] = (score, row)
    header = " | ".join(f"{loss} % loss" for loss in losses)
    print(f"| setting | {header} | kbit/s sent | packets with FEC | frames rebuilt by FEC at {losses[-1]} % |")
    print("| --- |" + " --- |" * (len(losses) + 3))
    for name, by_loss in table.items():
        scores = " | ".join(f"{by_loss[loss][0]:.2f}" for loss in losses)
        # The controller's settings differ per loss; the others are one encoding.
        last = by_loss[losses[-1]][1]
        sent = "/".join(by_loss[loss][1]["kbps"] for loss in losses) if name == "controller" else last["kbps"]
        share = "/".join(f"{float(by_loss[loss][1]['fec_packets']):.0%}" for loss in losses) if name == "controller" else f"{float(last['fec_packets']):.0%}"
        print(f"| {name} | {scores} | {sent} | {share} | {last['recovered']} |")


if __name__ == "__main__":
    main()
