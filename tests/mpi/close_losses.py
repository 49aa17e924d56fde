#!/usr/bin/env python3
"""close_losses.py A.jsonl B.jsonl RTOL: the loss of every step in both, within RTOL relative."""
import json
import sys

a = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(sys.argv[1])}
b = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(sys.argv[2])}
rtol = float(sys.argv[3])
assert a.keys() == b.keys(), f"steps differ: {sorted(a)} vs {sorted(b)}"
worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
print(f"{len(a)} steps, largest relative loss difference {worst:.3g} (bound {rtol:g})")
sys.exit(0 if worst <= rtol else 1)
