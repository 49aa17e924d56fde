#!/usr/bin/python3
"""table.py DIR - the benchmark table (markdown) from the JSON files bench/run.sh writes in DIR:
dsmoe-infer-lite8-{bf16,q8_0,q4_0}.json, dsmoe-train-s.json, dsmoe-train-s-bf16.json,
dsmoe-v2-lite-q4_0.json, torch-infer-lite8-bf16.json, torch-train-s.json. Missing files show as
"-". Peers (llama.cpp) are measured in the same run by bench/peers.sh, never quoted here."""
import json, os, sys


def load(d, name):
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def num(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def ratio(a, b):
    return "-" if a is None or not b else "{:.2f}x".format(a / b)


def pct(x):
    return "-" if x is None else "{:.0f}%".format(100 * x)


# The targets of the first speed issue for dsmoe on infer-lite8 (pp512, tg128).
TARGET = {"bf16": (300, 28), "q8_0": (400, 52), "q4_0": (400, 88)}


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "bench/out"
    ds = {w: load(d, "dsmoe-infer-lite8-" + w) for w in ("bf16", "q8_0", "q4_0")}
    ts, dt, tt = load(d, "torch-infer-lite8-bf16"), load(d, "dsmoe-train-s"), load(d, "torch-train-s")
    ref = next((j for j in list(ds.values()) + [dt] if j), {})
    m = ref.get("machine", {})
    print("# dsmoe bench results\n")
    print("- date: {}".format(ref.get("date", "-")))
    print("- machine: {} ({} cores, Highway {}), {} threads".format(
        m.get("cpu", "-"), m.get("cores", "-"), m.get("hwy_target", "-"), ref.get("threads", "-")))
    print("- PyTorch {} (OMP_WAIT_POLICY={})".format(
        (ts or tt).get("torch", "-"), (ts or tt).get("omp_wait_policy", "-")))
    print("- OPENBLAS_CORETYPE: {} (both engines)".format(ref.get("openblas_coretype") or
                                                         "unset, the CPU's own kernels"))
    print("- read bandwidth (median of the probes around each run's decodes) {} GB/s; GEMMs: fp32 "
          "sgemm {} GFLOP/s, bf16 {} GFLOP/s, int8 {} GOP/s; instruction peaks: fp32 FMA {}, "
          "bf16 dot {}, int8 dot {}\n".format(
        " / ".join("{} {}".format(w, num(j.get("read_bandwidth_bytes_per_s", 0) / 1e9 or None))
                   for w, j in ds.items()),
        num(ref.get("fp32_peak_flops_per_s", 0) / 1e9 or None),
        num(ref.get("bf16_peak_flops_per_s", 0) / 1e9 or None),
        num(ref.get("int8_peak_ops_per_s", 0) / 1e9 or None),
        num(ref.get("fp32_fma_peak_flops_per_s", 0) / 1e9 or None),
        num(ref.get("bf16_dot_peak_flops_per_s", 0) / 1e9 or None),
        num(ref.get("int8_dot_peak_ops_per_s", 0) / 1e9 or None)))
    pp, tg = "pp{}".format(ref.get("prompt", "-")), "tg{}".format(ref.get("decode_tokens", "-"))
    print("## infer-lite8 ({} / {}, median of the repetitions, tokens/s)\n".format(pp, tg))
    print("| weights | dsmoe {0} | dsmoe {1} | target {0} / {1} "
          "| PyTorch {0} / {1} | vs PyTorch pp / tg "
          "| tg of roofline | read GB/s | pp of peak | active MB/token | peak RSS GiB |".format(pp, tg))
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w, j in ds.items():
        t = ts if w == "bf16" else {}
        dp, dd = j.get("prefill_tokens_per_s"), j.get("decode_tokens_per_s")
        print("| {} | {} | {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} | {} |".format(
            w, num(dp), num(dd), TARGET[w][0], TARGET[w][1],
            num(t.get("prefill_tokens_per_s")), num(t.get("decode_tokens_per_s")),
            ratio(dp, t.get("prefill_tokens_per_s")), ratio(dd, t.get("decode_tokens_per_s")),
            pct(j.get("decode_fraction_of_roofline")),
            num(j.get("read_bandwidth_bytes_per_s", 0) / 1e9 or None),
            pct(j.get("prefill_fraction_of_peak")),
            num(j.get("active_bytes_per_token", 0) / 1e6 or None),
            num(j.get("peak_rss_bytes", 0) / 2**30 or None, "{:.2f}")))
    dt16 = load(d, "dsmoe-train-s-bf16")
    print("\n## train-s (batch {} x {}, AdamW, median tokens/s)\n".format(dt.get("batch", "-"), dt.get("seq", "-")))
    print("| engine | tokens/s | best | s/step | of peak | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for name, j in (("dsmoe f32", dt), ("dsmoe bf16 mixed precision", dt16), ("PyTorch f32", tt)):
        tps = j.get("train_tokens_per_s")
        step = None if not tps else j.get("batch", 8) * j.get("seq", 256) / tps
        print("| {} | {} | {} | {} | {} | {} |".format(
            name, num(tps), num(j.get("train_tokens_per_s_best")), num(step, "{:.2f}"),
            pct(j.get("train_fraction_of_peak")), num(j.get("peak_rss_bytes", 0) / 2**30 or None, "{:.2f}")))
    print("\ndsmoe / PyTorch training: f32 {}, bf16 {} (targets: f32 >= 1.5x, bf16 >= 2500 tokens/s)".format(
        ratio(dt.get("train_tokens_per_s"), tt.get("train_tokens_per_s")),
        ratio(dt16.get("train_tokens_per_s"), tt.get("train_tokens_per_s"))))
    print("\nllama.cpp on the same model and machine: bench/peers.sh (alternating pairs, same run).")
    full = load(d, "dsmoe-v2-lite-q4_0")
    if full:
        print("\nFull DeepSeek-V2-Lite shape ({} layers, random weights) at q4_0: peak RSS {} GiB "
              "(target <= 10), decode {} tokens/s, prefill {} tokens/s.".format(
                  full.get("config", {}).get("layers", "-"),
                  num(full.get("peak_rss_bytes", 0) / 2**30 or None, "{:.2f}"),
                  num(full.get("decode_tokens_per_s")), num(full.get("prefill_tokens_per_s"))))


if __name__ == "__main__":
    main()
