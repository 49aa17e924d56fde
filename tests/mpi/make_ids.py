#!/usr/bin/env python3
"""make_ids.py OUT B T VOCAB: writes int64 input_ids [B, T] (a fixed pseudo-random pattern)."""
import json
import struct
import sys

out, B, T, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ids = [(i * 7919 + 13) % vocab for i in range(B * T)]
data = struct.pack(f"<{B * T}q", *ids)
header = json.dumps({"input_ids": {"dtype": "I64", "shape": [B, T], "data_offsets": [0, len(data)]}})
header += " " * (-len(header) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header.encode() + data)
