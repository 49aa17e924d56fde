#!/usr/bin/env python3
"""Compares two safetensors files tensor by tensor (no numpy needed).

usage: compare_safetensors.py A B [--rtol X] [--only PREFIX,...]
Exit 0 when every tensor has the same shape and dtype and, for float tensors, every element is
bit-identical (default) or within rtol relative to max|A| of the tensor; integer tensors must
be identical. Prints one line per tensor that differs.
"""
import argparse
import json
import struct
import sys

FORMATS = {"F32": "f", "I64": "q", "I32": "i", "F64": "d"}


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        fmt = FORMATS[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // struct.calcsize(fmt)
        out[name] = (info["dtype"], info["shape"], struct.unpack(f"<{count}{fmt}", data[begin:end]))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rtol", type=float, default=0.0)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    a, b = read(args.a), read(args.b)
    prefixes = [p for p in args.only.split(",") if p]
    bad = 0
    for name in sorted(a):
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        if name not in b:
            print(f"{name}: missing in {args.b}")
            bad += 1
            continue
        (da, sa, va), (db, sb, vb) = a[name], b[name]
        if da != db or sa != sb:
            print(f"{name}: {da}{sa} vs {db}{sb}")
            bad += 1
            continue
        if va == vb:
            continue
        if da.startswith("I"):
            n = sum(x != y for x, y in zip(va, vb))
            print(f"{name}: {n} of {len(va)} differ")
            bad += 1
            continue
        scale = max(max(abs(x) for x in va), 1e-30)
        worst = max(abs(x - y) for x, y in zip(va, vb)) / scale
        n = sum(x != y for x, y in zip(va, vb))
        status = "ok" if worst <= args.rtol else "DIFFERS"
        print(f"{name}: {n} of {len(va)} elements differ, max |a-b| / max|a| = {worst:.3g} {status}")
        bad += worst > args.rtol
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
