"""bench/scale_out_model.py: expert parallelism on paper, 8 to 256 ranks (docs/scale-out.md).

For a V2-like and a V3-like setting, per rank count R: the bound on the remote ranks a token
reaches (device- or node-limited routing), the all-to-all bytes per token and MoE layer of one
training step (forward + backward) in dsmoe's formats and in DeepSeek's, and the time of one MoE
layer's exchanges in a training step for T tokens per rank, from a measured latency and bandwidth
(bench/pingpong.c, run by bench/scale_out.sh):

    exchange time per layer = n_collectives * (R - 1) * latency + T * r * bytes / bandwidth

n_collectives = 5 (dsmoe: forward counts + dispatch + combine, backward dispatch + combine); the
(R - 1) latency term is a pairwise all-to-all (each rank meets every other rank once per
collective, even with nothing to send); the bandwidth term assumes each rank sends at the measured
point-to-point bandwidth at the same time as every other (a full-bisection network).

Usage: python3 bench/scale_out_model.py [--pingpong DIR] [--tokens-per-rank T]
       DIR holds pingpong-vader.json and pingpong-tcp.json (bench/scale_out.sh writes them to
       bench/out/scale_out); without it, the numbers measured for docs/scale-out.md.
"""
import argparse
import json
import os

# Measured on the development machine (docs/scale-out.md): one-way latency (s), bandwidth (B/s).
DEFAULT_LINKS = {"vader": (2.8e-7, 3.53e9), "tcp": (3.97e-6, 4.66e9)}

FLOAT, DOUBLE = 4, 8
N_COLLECTIVES = 5  # per MoE layer and training step (forward counts, dispatch, combine; backward 2)
RANKS = (8, 16, 32, 64, 128, 256)

# The settings: hidden size H, routed experts E, experts per token K, the routing's groups and
# top groups M, MoE layers, GPUs (ranks) per node. Sources: DeepSeek-V2 (arXiv 2405.04434) sec.
# 2.2 / 3.1 and its config.json (n_group 8, topk_group 3, 160 experts, 6 per token, hidden 5120,
# 60 layers, first dense 1); DeepSeek-V3 (arXiv 2412.19437) sec. 2.1.2 / 3.2 and its config.json
# (n_group 8, topk_group 4, 256 experts, 8 per token, hidden 7168, 61 layers, first 3 dense).
SETTINGS = {
    # V2: device-limited routing. Experts in D groups, one per device, a token's experts on at
    # most M = 3 devices. The released model has D = n_group = 8 (8-way expert parallelism);
    # "groups = R" is the same rule at R devices (D = R, M = 3), a config change.
    "V2-like, n_group 8, M 3": dict(H=5120, E=160, K=6, groups=8, M=3, moe_layers=59,
                                    per_node=None),
    "V2-like, groups = R, M 3": dict(H=5120, E=160, K=6, groups="R", M=3, moe_layers=59,
                                     per_node=None),
    # V3: node-limited routing. 8 groups, one per node, a token's experts on at most M = 4 nodes;
    # 8 GPUs per node. dsmoe sends a token once per remote rank (not once per node and then
    # forwarded over NVLink as DeepSeek-V3 does): the bound on remote ranks is K.
    "V3-like, n_group 8, M 4 nodes": dict(H=7168, E=256, K=8, groups=8, M=4, moe_layers=58,
                                          per_node=8),
}


def remote_ranks_bound(s, R):
    """The most other ranks one token's experts live on (dsmoe's placement: contiguous experts
    per rank, ExpertParallel::max_ranks_per_token) and why."""
    K, M = s["K"], s["M"]
    groups = R if s["groups"] == "R" else s["groups"]
    if s["per_node"] is None:  # device-limited: groups map onto ranks when R divides them
        if groups % R == 0:
            return min(M, R - 1), f"M = {M} devices"
        return min(K, R - 1), "K, groups span ranks"
    nodes = max(1, R // s["per_node"])
    if groups % nodes == 0:  # node-limited: at most M nodes, at most K ranks on them
        return min(K, R - 1, M * s["per_node"]), f"K, on <= {min(M, nodes)} nodes"
    return min(K, R - 1), "K, groups span nodes"


def deepseek_destinations(s, R):
    """Remote destinations of one token over the network in DeepSeek's own scheme: V2 sends to
    at most M devices; V3 sends once to each of at most M remote nodes over InfiniBand and
    forwards inside the node over NVLink (sec. 3.2.2), so only nodes count."""
    if s["per_node"] is None:
        return remote_ranks_bound(s, R)[0]
    nodes = max(1, R // s["per_node"])
    if s["groups"] % nodes == 0:  # whole groups per node: at most M nodes
        return min(s["M"], nodes - 1)
    nodes_per_group = -(-nodes // s["groups"])  # a group spans several nodes
    return min(s["K"], s["M"] * nodes_per_group, nodes - 1)


def dsmoe_bytes(H, K):
    """Bytes per token, MoE layer and remote rank, forward + backward (model/expert_parallel.cpp):
    dispatch [H | K weights | K ids] floats, combine H doubles; backward d out H floats, d x and
    d gate weights H + K floats."""
    return FLOAT * (H + 2 * K) + DOUBLE * H + FLOAT * H + FLOAT * (H + K)


def deepseek_bytes(H):
    """DeepSeek-V3's formats (sec. 3.3): dispatch in FP8 (H bytes + one float scale per 128
    values), combine in BF16 (2H); the backward's two exchanges taken in BF16 (2H each)."""
    fp8 = H + FLOAT * H // 128
    return fp8 + 2 * H + 2 * H + 2 * H


def links(pingpong_dir):
    if pingpong_dir is None:
        return DEFAULT_LINKS
    out = {}
    for btl in ("vader", "tcp"):
        with open(os.path.join(pingpong_dir, f"pingpong-{btl}.json")) as f:
            measured = json.load(f)
        out[btl] = (measured["latency_s"], measured["bandwidth_bytes_per_s"])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pingpong", help="directory with pingpong-vader.json, pingpong-tcp.json")
    parser.add_argument("--tokens-per-rank", type=int, default=4096)
    args = parser.parse_args()
    measured = links(args.pingpong)
    T = args.tokens_per_rank
    print(f"Per MoE layer and training step (forward + backward), T = {T} tokens per rank; "
          "r = the bound on remote ranks per token; time = exchanges of one MoE layer, "
          + ", ".join(f"{btl}: latency {lat * 1e6:.2f} us, {bw / 1e9:.2f} GB/s"
                      for btl, (lat, bw) in measured.items()) + "\n")
    print("| setting | R | experts/rank | r (bound) | KB/token dsmoe | KB/token DeepSeek "
          "(network) | ms/layer vader | ms/layer tcp | of which latency (tcp) |")
    print("|---|---|---|---|---|---|---|---|---|")
    left_out = {}  # setting -> the rank counts left out
    for name, s in SETTINGS.items():
        for R in RANKS:
            if s["E"] % R != 0:  # dsmoe needs R | n_routed_experts
                left_out.setdefault(name, []).append(str(R))
                continue
            r, why = remote_ranks_bound(s, R)
            ours = r * dsmoe_bytes(s["H"], s["K"])
            theirs = deepseek_destinations(s, R) * deepseek_bytes(s["H"])
            times = {}
            for btl, (lat, bw) in measured.items():
                latency = N_COLLECTIVES * (R - 1) * lat
                times[btl] = (latency + T * ours / bw, latency)
            print(f"| {name} | {R} | {s['E'] // R} | {r}: {why} | {ours / 1e3:.0f} "
                  f"| {theirs / 1e3:.0f} | {times['vader'][0] * 1e3:.0f} "
                  f"| {times['tcp'][0] * 1e3:.0f} | {times['tcp'][1] * 1e3:.2f} |")
    if left_out:
        print("\nNot shown (R does not divide the routed experts): " + "; ".join(
            f"{name} at R = {', '.join(ranks)}" for name, ranks in left_out.items()) + ".")
    print("\nA whole step multiplies the per-layer time by the MoE layers "
          + ", ".join(f"({name.split(',')[0]}: {s['moe_layers']})" for name, s in
                      list(SETTINGS.items())[::2]) + ".")


if __name__ == "__main__":
    main()
