"""check_bench.py BENCH.json RANKS: the JSON of `dsmoe bench --train --json` under mpirun has the
ranks and, for train, prefill and decode, the all-to-all bytes sent / received per token of each
rank, its share of time in collectives and the tokens its experts received (max / mean), with
traffic within the bound of device-limited routing."""
import json
import sys

bench = json.load(open(sys.argv[1]))
ranks = int(sys.argv[2])
assert bench["ranks"] == ranks, bench["ranks"]
assert bench["train_tokens_per_s"] > 0 and bench["decode_tokens_per_s"] > 0
parallel = bench["parallel"]
assert parallel["ranks"] == ranks
for phase in ("train", "prefill", "decode"):
    p = parallel[phase]
    for key in ("a2a_bytes_sent_per_token", "a2a_bytes_received_per_token", "comm_share",
                "tokens_received"):
        entry = p[key]
        assert len(entry["per_rank"]) == ranks, (phase, key, entry)
        assert entry["max"] >= entry["mean"] >= 0, (phase, key, entry)
    assert p["a2a_bytes_sent_per_token"]["mean"] > 0, (phase, p)
    assert all(0 <= share <= 1 for share in p["comm_share"]["per_rank"]), (phase, p)
    assert p["tokens_received"]["max_over_mean"] >= 1, (phase, p)
    assert 1 <= p["ranks_per_token"] <= p["max_ranks_per_token"], (phase, p)
    # Sent and received balance over the ranks; no rank exceeds the bound of its traffic.
    sent = sum(s * t for s, t in zip(p["a2a_bytes_sent_per_token"]["per_rank"], p["tokens_per_rank"]))
    received = sum(r * t for r, t in zip(p["a2a_bytes_received_per_token"]["per_rank"],
                                         p["tokens_per_rank"]))
    assert abs(sent - received) < 1e-6 * sent, (phase, sent, received)
    assert p["a2a_bytes_sent_per_token"]["mean"] <= p["a2a_bytes_per_token_bound"], (phase, p)
    print(f"bench {phase} on {ranks} ranks: {p['a2a_bytes_sent_per_token']['mean']:.0f} bytes "
          f"per token (bound {p['a2a_bytes_per_token_bound']}), comm "
          f"{100 * p['comm_share']['mean']:.0f}%, tokens received max/mean "
          f"{p['tokens_received']['max_over_mean']:.2f}")
