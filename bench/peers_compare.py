#!/usr/bin/env python3
"""peers_compare.py: bench/peers.sh's same-model check (standard library only).

  peers_compare.py input --vocab V --n N --seed S --out INPUT.safetensors
      writes int64 input_ids [1, N] (pseudo-random ids in [0, V)) for `dsmoe forward` and prints
      them comma-separated (for peers_logits);
  peers_compare.py compare --dsmoe OUT.safetensors --llama LOGITS.f32 --label L [--min-cos C]
                            [--reference F32.safetensors]
      compares dsmoe's logits [1, N, V] with llama.cpp's [N, V] position by position: cosine,
      argmax, largest difference relative to the largest |logit|; prints one line and one JSON
      object, and exits 1 when they are not the same model:
      * without --reference: a position's cosine is below C;
      * with --reference (dsmoe's logits with float32 weights): the engines' mean distance
        (1 - cosine) exceeds twice the format's own (dsmoe at the format vs float32), or a cosine
        is below 0.99. Both engines round activations to int8 blocks for Q8_0 / Q4_0 products, each
        its own way (ggml rounds a block's f16 scale to nearest, dsmoe up), so at Q8_0 they differ
        by about what Q8_0 itself changes; at Q4_0 the shared 4-bit weights dominate the format's
        effect and the engines sit far closer to each other than to float32.
"""
import argparse
import json
import math
import random
import struct
import sys
from array import array


def write_ids(path, ids):
    data = struct.pack(f"<{len(ids)}q", *ids)
    header = {"input_ids": {"dtype": "I64", "shape": [1, len(ids)], "data_offsets": [0, len(data)]}}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def read_f32_tensor(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        info = header[name]
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor '{name}' is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        f.seek(8 + n + begin)
        values = array("f")
        values.frombytes(f.read(end - begin))
    return info["shape"], values


def distances(ours, theirs, n_pos, vocab):
    """Per position: cosine, whether the argmaxes agree, max |diff| / max |ours|."""
    cosines, agree, rel_diffs = [], 0, []
    for p in range(n_pos):
        a = ours[p * vocab:(p + 1) * vocab]
        b = theirs[p * vocab:(p + 1) * vocab]
        dot = sum(x * y for x, y in zip(a, b))
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        cosines.append(dot / norm if norm > 0 else 0.0)
        agree += max(range(vocab), key=a.__getitem__) == max(range(vocab), key=b.__getitem__)
        scale = max(max(abs(x) for x in a), 1e-30)
        rel_diffs.append(max(abs(x - y) for x, y in zip(a, b)) / scale)
    return cosines, agree, rel_diffs


def compare(args):
    shape, ours = read_f32_tensor(args.dsmoe, "logits")
    n_pos, vocab = shape[-2], shape[-1]
    theirs = array("f")
    with open(args.llama, "rb") as f:
        theirs.frombytes(f.read())
    if len(theirs) != n_pos * vocab:
        sys.exit(f"{args.llama}: {len(theirs)} logits, expected {n_pos} x {vocab}")
    cosines, same_argmax, rel_diffs = distances(ours, theirs, n_pos, vocab)
    gap = sum(1 - c for c in cosines) / n_pos
    result = {
        "label": args.label,
        "positions": n_pos,
        "vocab": vocab,
        "min_cosine": min(cosines),
        "mean_cosine": sum(cosines) / n_pos,
        "argmax_agree": same_argmax,
        "max_rel_diff": max(rel_diffs),
    }
    reference = ""
    if args.reference:
        _, f32 = read_f32_tensor(args.reference, "logits")
        ref_cosines, _, _ = distances(f32, ours, n_pos, vocab)
        ref_gap = sum(1 - c for c in ref_cosines) / n_pos
        result["format_vs_f32_min_cosine"] = min(ref_cosines)
        result["format_vs_f32_mean_cosine"] = 1 - ref_gap
        result["pass"] = gap <= 2 * ref_gap + 1e-6 and min(cosines) >= 0.99
        reference = (f"; the format itself moves dsmoe's logits (vs float32 weights) to cosine min "
                     f"{min(ref_cosines):.6f} mean {1 - ref_gap:.6f}")
    else:
        result["pass"] = min(cosines) >= args.min_cos
    print(f"same-model check {args.label}: {n_pos} positions, cosine min {result['min_cosine']:.6f} "
          f"mean {result['mean_cosine']:.6f}, argmax agrees at {same_argmax}/{n_pos}, "
          f"max |diff| / max |logit| {result['max_rel_diff']:.2e}{reference}"
          f" -> {'same model' if result['pass'] else 'DIFFERENT MODEL'}")
    print(json.dumps(result))
    return 0 if result["pass"] else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("input")
    make.add_argument("--vocab", type=int, required=True)
    make.add_argument("--n", type=int, default=16)
    make.add_argument("--seed", type=int, default=7)
    make.add_argument("--out", required=True)
    check = sub.add_parser("compare")
    check.add_argument("--dsmoe", required=True)
    check.add_argument("--llama", required=True)
    check.add_argument("--label", default="")
    check.add_argument("--min-cos", type=float, default=0.9999)
    check.add_argument("--reference")
    args = parser.parse_args()
    if args.command == "input":
        rng = random.Random(args.seed)
        ids = [rng.randrange(args.vocab) for _ in range(args.n)]
        write_ids(args.out, ids)
        print(",".join(map(str, ids)))
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
