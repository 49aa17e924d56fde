#!/usr/bin/python3
"""compare_loss.py F32_RUN BF16_RUN - compares the loss curves (metrics.jsonl) of two `dsmoe train`
runs that differ only in --precision: per window of 10 steps, the relative difference of the mean
losses, and the largest of them (the issue asks for within 1%)."""
import json, os, sys


def losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def main():
    a, b = losses(sys.argv[1]), losses(sys.argv[2])
    n = min(len(a), len(b))
    worst = 0.0
    print("| steps | f32 mean loss | bf16 mean loss | relative difference |")
    print("|---|---|---|---|")
    for begin in range(0, n - n % 10, 10):
        ma, mb = sum(a[begin:begin + 10]) / 10, sum(b[begin:begin + 10]) / 10
        rel = abs(mb - ma) / ma
        worst = max(worst, rel)
        if begin % 50 == 0 or begin + 10 >= n - n % 10:
            print("| {}-{} | {:.4f} | {:.4f} | {:.2%} |".format(begin + 1, begin + 10, ma, mb, rel))
    print("\n{} steps; largest relative difference of 10-step means: {:.2%}; final step: "
          "f32 {:.4f}, bf16 {:.4f}".format(n, worst, a[n - 1], b[n - 1]))


if __name__ == "__main__":
    main()
