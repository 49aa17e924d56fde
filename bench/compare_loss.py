#!/usr/bin/python3
"""compare_loss.py F32_RUN BF16_RUN [F32_RUN BF16_RUN ...] - compares the loss curves
(metrics.jsonl) of `dsmoe train` runs that differ only in --precision (or in anything else: the
first of each pair is the reference).

One pair: per window of 10 steps, the relative difference of the mean losses, and the largest of
them (the issue asks for within 1%). Several pairs (seeds): the largest gaps of each pair, then
the mean curves (each step's loss averaged over the pairs) window by window, with the mean of the
per-pair differences and its standard error."""
import json
import math
import os
import sys

WINDOW = 10


def losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def window_mean(curve, begin, width=WINDOW):
    return sum(curve[begin:begin + width]) / width


def largest_gap(ref, other, n, width):
    """The largest relative difference of width-step means, and the first step of its window."""
    return max((abs(window_mean(other, b, width) - window_mean(ref, b, width)) /
                window_mean(ref, b, width), b + 1) for b in range(0, n - n % width, width))


def one_pair(a, b, n):
    print("| steps | f32 mean loss | bf16 mean loss | relative difference |")
    print("|---|---|---|---|")
    for begin in range(0, n - n % WINDOW, WINDOW):
        ma, mb = window_mean(a, begin), window_mean(b, begin)
        if begin % 50 == 0 or begin + WINDOW >= n - n % WINDOW:
            print("| {}-{} | {:.4f} | {:.4f} | {:.2%} |".format(begin + 1, begin + WINDOW, ma, mb,
                                                               abs(mb - ma) / ma))
    print("\n{} steps; largest relative difference of 10-step means: {:.2%}; final step: "
          "f32 {:.4f}, bf16 {:.4f}".format(n, largest_gap(a, b, n, WINDOW)[0], a[n - 1], b[n - 1]))


def several_pairs(pairs, n):
    for i, (a, b) in enumerate(pairs):
        gaps = ", ".join("{}-step {:.2%} at step {}".format(w, *largest_gap(a, b, n, w))
                         for w in (10, 25, 50))
        print("pair {}: largest gaps: {}; last step {:.4f} vs {:.4f}".format(
            i + 1, gaps, a[n - 1], b[n - 1]))
    mean_a = [sum(a[i] for a, _ in pairs) / len(pairs) for i in range(n)]
    mean_b = [sum(b[i] for _, b in pairs) / len(pairs) for i in range(n)]
    print("mean curves: largest gaps: " + ", ".join(
        "{}-step {:.2%}".format(w, largest_gap(mean_a, mean_b, n, w)[0]) for w in (10, 25, 50)))
    print("\n| steps | first mean loss | second mean loss | difference of the means "
          "| per pair: mean +- s.e. (largest) |")
    print("|---|---|---|---|---|")
    for begin in range(0, n - n % WINDOW, WINDOW):
        d = [(window_mean(b, begin) - window_mean(a, begin)) / window_mean(a, begin)
             for a, b in pairs]
        mean = sum(d) / len(d)
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
        ma, mb = window_mean(mean_a, begin), window_mean(mean_b, begin)
        print("| {}-{} | {:.4f} | {:.4f} | {:+.2%} | {:+.2%} +- {:.2%} ({:.2%}) |".format(
            begin + 1, begin + WINDOW, ma, mb, (mb - ma) / ma, mean, se, max(map(abs, d))))


def main():
    runs = sys.argv[1:]
    if len(runs) < 2 or len(runs) % 2:
        sys.exit(__doc__)
    pairs = [(losses(runs[i]), losses(runs[i + 1])) for i in range(0, len(runs), 2)]
    n = min(min(len(a), len(b)) for a, b in pairs)
    if len(pairs) == 1:
        one_pair(*pairs[0], n)
    else:
        several_pairs(pairs, n)


if __name__ == "__main__":
    main()
