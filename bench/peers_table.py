#!/usr/bin/env python3
"""peers_table.py: the table of bench/peers.sh (standard library only).

  peers_table.py --pair RUN_DIR          one line for one pair (llama-bench [+ ik_llama.cpp's] + dsmoe bench)
  peers_table.py --dir DIR [--checks F]  the table over DIR/runs/<format>/pair<i>/: per format the
      median tokens/s of each engine, the median of the per-pair ratios dsmoe / llama.cpp with
      their spread (min-max over the pairs), the same against ik_llama.cpp where every pair ran it
      (bench/peers.sh with PEERS_IK_BENCH), the read-bandwidth probes around the pairs, then the
      same-model checks, the CPU family, the load averages and the date.
"""
import argparse
import datetime
import glob
import json
import os
import statistics


def load_json(path):
    """The JSON of path; ik_llama.cpp's llama-bench prints warnings (a line "WARNING: ...") into
    its JSON on stdout: lines that cannot be JSON are dropped."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip()[:1] in ("[", "]", "{", "}", '"')]
        return json.loads("\n".join(lines))


def llama_tps(path, key):
    """avg_ts of the llama-bench test whose n_prompt (pp) or n_gen (tg) is nonzero."""
    for test in load_json(path):
        if test.get(key, 0) > 0:
            return test["avg_ts"], test
    raise SystemExit(f"{path}: no test with {key} > 0")


def read_pair(run):
    llama_pp, pp_test = llama_tps(os.path.join(run, "llama_pp.json"), "n_prompt")
    llama_tg, tg_test = llama_tps(os.path.join(run, "llama_tg.json"), "n_gen")
    ours = load_json(os.path.join(run, "dsmoe.json"))
    bandwidth = [load_json(os.path.join(run, f"bw_{when}.json"))["read_bandwidth_bytes_per_s"] / 1e9
                 for when in ("before", "after")]
    with open(os.path.join(run, "load")) as f:
        load = f.read().split()
    ik = {}
    if os.path.exists(os.path.join(run, "ik_tg.json")):  # ik_llama.cpp (PEERS_IK_BENCH)
        ik["ik_pp"], _ = llama_tps(os.path.join(run, "ik_pp.json"), "n_prompt")
        ik["ik_tg"], ik_test = llama_tps(os.path.join(run, "ik_tg.json"), "n_gen")
        ik["ik_commit"] = ik_test.get("build_commit")
    return {**ik,
        "llama_pp": llama_pp, "llama_tg": llama_tg,
        "dsmoe_pp": ours["prefill_tokens_per_s"], "dsmoe_tg": ours["decode_tokens_per_s"],
        "bandwidth_gbps": bandwidth, "load": load,
        "llama_test": {k: tg_test.get(k) for k in ("build_commit", "cpu_info", "n_threads",
                                                   "flash_attn", "type_k", "n_depth", "n_gen")},
        "prompt": pp_test["n_prompt"], "decode": tg_test["n_gen"], "depth": tg_test.get("n_depth", 0),
        "dsmoe_cpu": ours.get("machine", {}).get("cpu", ""),
    }


def pair_line(run):
    p = read_pair(run)
    ik = (f"ik_llama.cpp pp {p['ik_pp']:.1f} tg {p['ik_tg']:.2f} | " if "ik_tg" in p else "")
    vs_ik = (f" | vs ik pp {p['dsmoe_pp'] / p['ik_pp']:.2f}x tg {p['dsmoe_tg'] / p['ik_tg']:.2f}x"
             if "ik_tg" in p else "")
    return (f"{run}: llama.cpp pp {p['llama_pp']:.1f} tg {p['llama_tg']:.2f} | {ik}dsmoe pp "
            f"{p['dsmoe_pp']:.1f} tg {p['dsmoe_tg']:.2f} | ratio pp {p['dsmoe_pp'] / p['llama_pp']:.2f}x "
            f"tg {p['dsmoe_tg'] / p['llama_tg']:.2f}x{vs_ik} | bandwidth {p['bandwidth_gbps'][0]:.1f} -> "
            f"{p['bandwidth_gbps'][1]:.1f} GB/s | load {' '.join(p['load'])}")


def cpu_family():
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    key, value = (s.strip() for s in line.split(":", 1))
                    fields.setdefault(key, value)
                if not line.strip() and fields:
                    break
    except OSError:
        return "unknown CPU"
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0"))
    model = int(fields.get("model", "0"))
    name = fields.get("model name", "unknown CPU")
    zen = ""
    if vendor == "AuthenticAMD":
        # Family 19h: Zen 3 (models 00-0F, 20-5F) and Zen 4 (10-1F, 60-7F, A0-AF); 1Ah: Zen 5.
        if family == 0x19:
            zen = "Zen 3" if model < 0x10 or 0x20 <= model < 0x60 else "Zen 4"
        elif family == 0x1A:
            zen = "Zen 5"
    return f"{name} (family {family:#x} model {model:#x}{', ' + zen if zen else ''})"


def spread(values):
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def table(args):
    lines = []
    out = lines.append
    runs_by_format = {}
    for run in sorted(glob.glob(os.path.join(args.dir, "runs", "*", "pair*"))):
        if os.path.exists(os.path.join(run, "bw_after.json")):
            runs_by_format.setdefault(os.path.basename(os.path.dirname(run)), []).append(read_pair(run))
    order = [f for f in ("f32", "bf16", "q8_0", "q4_0") if f in runs_by_format]
    order += [f for f in runs_by_format if f not in order]
    if not order:
        raise SystemExit(f"{args.dir}/runs: no complete pair")
    first = runs_by_format[order[0]][0]
    out(f"dsmoe vs llama.cpp ({first['llama_test']['build_commit']}), same checkpoint, "
        f"{first['llama_test']['n_threads']} threads; prefill pp{first['prompt']} from an empty "
        f"context, decode tg{first['decode']} after {first['depth']} tokens in both")
    out("")
    with_ik = all("ik_tg" in r for rs in runs_by_format.values() for r in rs)
    ik_head = "ik_llama.cpp pp / tg (t/s) | " if with_ik else ""
    ik_ratio_head = "dsmoe/ik pp | dsmoe/ik tg | " if with_ik else ""
    out(f"| format | pairs | llama.cpp pp / tg (t/s) | {ik_head}dsmoe pp / tg (t/s) | dsmoe/llama.cpp pp: "
        f"median (min-max) | tg: median (min-max) | {ik_ratio_head}read bandwidth (GB/s) |")
    out("|" + " --- |" * (7 + 3 * with_ik))
    for fmt in order:
        runs = runs_by_format[fmt]
        med = lambda key: statistics.median(r[key] for r in runs)
        bandwidth = [b for r in runs for b in r["bandwidth_gbps"]]
        ik_cells = ik_ratio_cells = ""
        if with_ik:
            ik_cells = f"{med('ik_pp'):.1f} / {med('ik_tg'):.2f} | "
            ik_ratio_cells = (f"{spread([r['dsmoe_pp'] / r['ik_pp'] for r in runs])} | "
                              f"{spread([r['dsmoe_tg'] / r['ik_tg'] for r in runs])} | ")
        out(f"| {fmt} | {len(runs)} | {med('llama_pp'):.1f} / {med('llama_tg'):.2f} | {ik_cells}"
            f"{med('dsmoe_pp'):.1f} / {med('dsmoe_tg'):.2f} | "
            f"{spread([r['dsmoe_pp'] / r['llama_pp'] for r in runs])} | "
            f"{spread([r['dsmoe_tg'] / r['llama_tg'] for r in runs])} | {ik_ratio_cells}"
            f"{min(bandwidth):.1f}-{max(bandwidth):.1f} |")
    out("")
    if with_ik:
        out(f"- ik_llama.cpp {first['ik_commit']} (built by hand), decode as its -gp "
            f"{first['prompt']},{first['decode']}")
    if args.checks and os.path.exists(args.checks):
        with open(args.checks) as f:
            for line in f:
                if line.startswith("{"):
                    c = json.loads(line)
                    own = (f" (the format's own effect on dsmoe's logits: cosine min "
                           f"{c['format_vs_f32_min_cosine']:.6f})"
                           if "format_vs_f32_min_cosine" in c else "")
                    out(f"- same model, {c['label']}: cosine min {c['min_cosine']:.6f}, argmax "
                        f"{c['argmax_agree']}/{c['positions']}, max |diff| / max |logit| "
                        f"{c['max_rel_diff']:.1e}{own}")
    isa_path = os.path.join(args.dir, "llama-isa.txt")
    if os.path.exists(isa_path):
        with open(isa_path) as f:
            out(f"- {f.read().strip()}")
    loads = sorted(float(r["load"][0]) for rs in runs_by_format.values() for r in rs)
    out(f"- CPU: {cpu_family()}; llama.cpp saw: {first['llama_test']['cpu_info']}")
    # The engines' own threads (one per core, pair after pair, plus the caller's) keep the
    # 1-minute average near the core count (up to 2.75 on 2 cores with three engines and nothing
    # else running, session 11): only beyond the cores + 1 did other work run.
    busy = (os.cpu_count() or 1) + 1.0
    out(f"- load average (1 min) at the pairs: {loads[0]:.2f}-{loads[-1]:.2f}"
        + ("  (LOADED MACHINE: other work was running; the figures are not speeds of the engines)"
           if loads[-1] > busy else f" (at most the cores + 1: the runs' own threads)"))
    finished = max(os.path.getmtime(path)
                   for path in glob.glob(os.path.join(args.dir, "runs", "*", "pair*", "bw_after.json")))
    out(f"- date (last pair): "
        f"{datetime.datetime.fromtimestamp(finished, datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pair")
    parser.add_argument("--dir")
    parser.add_argument("--checks")
    args = parser.parse_args()
    if args.pair:
        print(pair_line(args.pair))
    elif args.dir:
        table(args)
    else:
        parser.error("--pair or --dir")


if __name__ == "__main__":
    main()
