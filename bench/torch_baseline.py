#!/usr/bin/python3
"""torch_baseline.py - the PyTorch baseline of `dsmoe bench`: a compact DeepSeek-V2 / V3 causal LM
(MLA + DeepSeekMoE) written for speed as a good PyTorch user would, measured like dsmoe bench.

  torch_baseline.py --model DIR [--weights f32|bf16] [--prompt 512] [--decode 128] [--reps 3]
                    [--train --batch 8 --seq 256] [--threads N]        -> one JSON line
  torch_baseline.py --model tests/data/v3-tiny/model --check tests/data/v3-tiny/expected.safetensors

Choices (what makes it a fair, tuned baseline):
  * weights mmap'd from model.safetensors (parsed by hand: u64 LE header length, JSON header,
    data), experts stacked per layer as gate_up [E, 2I, H] and down [E, H, I];
  * routed experts by token gathering: assignments sorted by expert, one GEMM chain per expert
    that has tokens, scattered back with index_add weighted by the gate;
  * MLA prefill in the naive form (k, v expanded from the latent); the cache holds only the
    normalised latent c_kv and the rope key, and decode uses the absorbed form (W_UK folded into
    the query, W_UV applied after the attention-weighted sum of latents), as dsmoe does;
  * --weights bf16: weights and activations in bfloat16 (oneDNN bf16 GEMMs), router in float32;
  * training (f32): autograd backward and torch.optim.AdamW (foreach), loss = next-token CE;
  * OMP_WAIT_POLICY=PASSIVE (set here when the environment sets neither it nor GOMP_SPINCOUNT;
    spinning OpenMP threads cost 2-100x on a busy 2-core machine; bench/run.sh passes dsmoe's
    choice, GOMP_SPINCOUNT=10000 on an idle machine) and torch.set_num_threads(cores);
  * bench/run.sh also sets GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=64G
    so that freed tensors are reused instead of unmapped (PyTorch's CPU allocator does not cache).
DeepSeekMoE V1 (model_type "deepseek") and MTP modules are not implemented (MTP is ignored).
"""
import argparse, json, math, mmap, os, resource, struct, sys, time
if "GOMP_SPINCOUNT" not in os.environ:  # (libgomp takes GOMP_SPINCOUNT over a passive policy)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before libgomp starts (ACTIVE to compare)
import torch  # noqa: E402
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}


def read_safetensors(path):
    """name -> tensor viewing a private (copy-on-write) mmap of the file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = DTYPES[info["dtype"]]
        s, e = info["data_offsets"]
        count = (e - s) // torch.empty(0, dtype=dt).element_size()
        t = torch.frombuffer(buf, dtype=dt, count=count, offset=8 + n + s) if count else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def yarn_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


class Model:
    def __init__(self, model_dir, dtype):
        c = json.load(open(os.path.join(model_dir, "config.json")))
        assert c["model_type"] in ("deepseek_v2", "deepseek_v3"), "V2/V3 only: " + c["model_type"]
        self.c, self.dtype, g = c, dtype, c.get
        self.v3 = c["model_type"] == "deepseek_v3"
        self.L, self.nh, self.H = c["num_hidden_layers"], c["num_attention_heads"], c["hidden_size"]
        self.q_lora, self.kv_lora = g("q_lora_rank"), c["kv_lora_rank"]
        self.dn, self.dr, self.dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        self.eps = g("rms_norm_eps", 1e-6)
        self.E, self.K = g("n_routed_experts") or 0, g("num_experts_per_tok") or 0
        self.first_dense, self.freq = g("first_k_dense_replace", 0), g("moe_layer_freq", 1)
        self.G, self.TG = g("n_group") or 1, g("topk_group") or 1
        self.method = g("topk_method") or ("noaux_tc" if self.v3 else "greedy")
        self.sigmoid = g("scoring_func", "sigmoid" if self.v3 else "softmax") == "sigmoid"
        self.norm_topk, self.rsf = bool(g("norm_topk_prob", False)), g("routed_scaling_factor", 1.0)
        self.rope = dict(g("rope_parameters") or g("rope_scaling") or {})
        self.rope_tables(g("rope_theta", 10000.0), g("max_position_embeddings", 4096))
        raw = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        p = {}
        for name, t in raw.items():
            parts = name.split(".")
            if len(parts) > 2 and parts[1] == "layers" and int(parts[2]) >= self.L:
                continue  # MTP modules
            keep_f32 = name.endswith("mlp.gate.weight") or "correction_bias" in name
            p[name] = t.to(torch.float32 if keep_f32 else dtype)
        for i in range(self.L):  # stack experts: [E, 2I, H] and [E, H, I]
            if not self.is_moe(i):
                continue
            pre = f"model.layers.{i}.mlp.experts"
            p[f"{pre}.gate_up"] = torch.stack([torch.cat((p.pop(f"{pre}.{e}.gate_proj.weight"),
                                                          p.pop(f"{pre}.{e}.up_proj.weight"))) for e in range(self.E)])
            p[f"{pre}.down"] = torch.stack([p.pop(f"{pre}.{e}.down_proj.weight") for e in range(self.E)])
        self.p = {k: v.contiguous() for k, v in p.items()}

    def is_moe(self, i):
        return self.E > 0 and i >= self.first_dense and i % self.freq == 0

    def rope_tables(self, theta, max_pos):
        r, d = self.rope, self.dr
        theta = r.get("rope_theta", theta)
        pos_freqs = theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        self.scale, self.att_factor = (self.dn + self.dr) ** -0.5, 1.0
        kind = r.get("rope_type", r.get("type", "default"))
        if kind in ("default", None):
            self.inv_freq = 1.0 / pos_freqs
            return
        assert kind == "yarn", r
        f, orig = r["factor"], r.get("original_max_position_embeddings") or max_pos
        m, m_all = r.get("mscale"), r.get("mscale_all_dim")
        self.att_factor = r.get("attention_factor") or (
            yarn_mscale(f, m) / yarn_mscale(f, m_all) if (m and m_all) else yarn_mscale(f))
        corr = lambda rot: d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))
        lo, hi = corr(r.get("beta_fast") or 32), corr(r.get("beta_slow") or 1)
        if r.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, d - 1)
        hi = hi + 0.001 if lo == hi else hi
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        self.inv_freq = (1.0 / (f * pos_freqs)) * ramp + (1.0 / pos_freqs) * (1 - ramp)
        if m_all:
            self.scale *= yarn_mscale(f, m_all) ** 2

    # -- pieces ---------------------------------------------------------------------------------
    def norm(self, x, name):
        xf = x.float()
        return self.p[name] * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def lin(self, x, name):
        return F.linear(x, self.p[name + ".weight"])

    def swiglu(self, x, pre):
        return self.lin(F.silu(self.lin(x, pre + ".gate_proj")) * self.lin(x, pre + ".up_proj"), pre + ".down_proj")

    def rot(self, x, cos, sin):  # interleaved pairs (2i, 2i+1); cos/sin [T, d/2]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1).flatten(-2)

    def attention(self, x, i, cos, sin, cache):
        pre, (B, T, _), nh = f"model.layers.{i}.self_attn", x.shape, self.nh
        q = self.lin(x, pre + ".q_proj") if self.q_lora is None else self.lin(
            self.norm(self.lin(x, pre + ".q_a_proj"), pre + ".q_a_layernorm.weight"), pre + ".q_b_proj")
        q_nope, q_rope = q.view(B, T, nh, self.dn + self.dr).transpose(1, 2).split([self.dn, self.dr], -1)
        q_rope = self.rot(q_rope, cos, sin)
        latent, k_rope = self.lin(x, pre + ".kv_a_proj_with_mqa").split([self.kv_lora, self.dr], -1)
        latent = self.norm(latent, pre + ".kv_a_layernorm.weight")   # [B, T, C]
        k_rope = self.rot(k_rope, cos, sin)                            # [B, T, dr]
        if cache is not None:
            if i in cache:
                latent = torch.cat((cache[i][0], latent), 1)
                k_rope = torch.cat((cache[i][1], k_rope), 1)
            cache[i] = (latent, k_rope)
        S = latent.shape[1]
        w_kv = self.p[pre + ".kv_b_proj.weight"].view(nh, self.dn + self.dv, self.kv_lora)
        if T == 1 and cache is not None:  # absorbed decode over the latent cache
            q_lat = torch.einsum("bhd,hdc->bhc", q_nope[:, :, 0], w_kv[:, :self.dn])
            att = (torch.einsum("bhc,bsc->bhs", q_lat, latent) +
                   torch.einsum("bhr,bsr->bhs", q_rope[:, :, 0], k_rope)) * self.scale
            o_lat = torch.einsum("bhs,bsc->bhc", att.float().softmax(-1).to(x.dtype), latent)
            o = torch.einsum("bhc,hvc->bhv", o_lat, w_kv[:, self.dn:]).reshape(B, 1, nh * self.dv)
        else:  # naive: k, v expanded from the latent
            k_nope, v = F.linear(latent, self.p[pre + ".kv_b_proj.weight"]).view(
                B, S, nh, self.dn + self.dv).transpose(1, 2).split([self.dn, self.dv], -1)
            qs = torch.cat((q_nope, q_rope), -1)
            ks = torch.cat((k_nope, k_rope[:, None].expand(B, nh, S, self.dr)), -1)
            att = torch.matmul(qs, ks.transpose(-1, -2)) * self.scale
            if T > 1:
                att = att.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(S - T + 1), float("-inf"))
            o = torch.matmul(att.float().softmax(-1).to(x.dtype), v).transpose(1, 2).reshape(B, T, -1)
        return self.lin(o, pre + ".o_proj")

    def route(self, x, i):
        pre = f"model.layers.{i}.mlp.gate"
        logits = F.linear(x.float(), self.p[pre + ".weight"])
        N, E, G = logits.shape[0], self.E, self.G
        s = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
        sel = s + self.p[pre + ".e_score_correction_bias"] if self.method == "noaux_tc" else s
        if self.method in ("noaux_tc", "group_limited_greedy") and G > 1:
            gs = sel.view(N, G, E // G)
            gs = gs.topk(2, -1)[0].sum(-1) if self.method == "noaux_tc" else gs.max(-1).values
            keep = torch.zeros_like(gs).scatter_(1, gs.topk(self.TG, -1, sorted=False)[1], 1.0).bool()
            sel = sel.masked_fill(~keep.repeat_interleave(E // G, 1), 0.0)
        idx = sel.topk(self.K, -1, sorted=False)[1]
        w = s.gather(1, idx)
        if self.norm_topk and self.K > 1:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * self.rsf

    def moe(self, x, i):
        pre = f"model.layers.{i}.mlp"
        B, T, H = x.shape
        xf = x.reshape(-1, H)
        idx, w = self.route(xf, i)
        flat = idx.reshape(-1)
        order = flat.argsort()
        tok = order // self.K
        xs, ws = xf.index_select(0, tok), w.reshape(-1).index_select(0, order).to(x.dtype)
        # unbind, not gu[e]: its backward is one stack, where E indexings would each allocate and
        # sum a zero gradient of the whole [E, ...] tensor
        gu, dn = self.p[pre + ".experts.gate_up"].unbind(0), self.p[pre + ".experts.down"].unbind(0)
        ys = []
        for e, h in enumerate(xs.split(torch.bincount(flat, minlength=self.E).tolist())):
            if h.shape[0]:
                g, u = F.linear(h, gu[e]).chunk(2, -1)
                ys.append(F.linear(F.silu(g) * u, dn[e]))
        out = torch.zeros_like(xf).index_add(0, tok, torch.cat(ys) * ws[:, None])
        if (self.c.get("n_shared_experts") or 0) > 0:
            out = out + self.swiglu(xf, pre + ".shared_experts")
        return out.view(B, T, H)

    def forward(self, ids, cache=None, start=0, last_only=False):
        x = F.embedding(ids, self.p["model.embed_tokens.weight"])
        f = torch.arange(start, start + ids.shape[1]).float()[:, None] * self.inv_freq[None]
        cos, sin = (f.cos() * self.att_factor).to(x.dtype), (f.sin() * self.att_factor).to(x.dtype)
        for i in range(self.L):
            pre = f"model.layers.{i}"
            x = x + self.attention(self.norm(x, pre + ".input_layernorm.weight"), i, cos, sin, cache)
            h = self.norm(x, pre + ".post_attention_layernorm.weight")
            x = x + (self.moe(h, i) if self.is_moe(i) else self.swiglu(h, pre + ".mlp"))
        x = self.norm(x[:, -1:] if last_only else x, "model.norm.weight")
        return F.linear(x, self.p["lm_head.weight"]).float()


def timed(fn, reps, warmup=0):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)


def median(xs):
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def bench_inference(m, P, N, reps):
    gen = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, m.c["vocab_size"], (1, P), generator=gen)
    pre_t, dec_t = [], []
    with torch.inference_mode():
        # Untimed warm-up, as dsmoe bench does: the prompt and one decode step (pages the weights
        # in; the allocator grows to its working size).
        cache = {}
        logits = m.forward(prompt, cache=cache, last_only=True)
        if N > 0:
            m.forward(logits[:, -1].argmax(-1, keepdim=True), cache=cache, start=P)
        for _ in range(reps):
            cache = {}
            t = time.perf_counter()
            logits = m.forward(prompt, cache=cache, last_only=True)
            pre_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            for j in range(N):
                logits = m.forward(logits[:, -1].argmax(-1, keepdim=True), cache=cache, start=P + j)
            dec_t.append(time.perf_counter() - t)
    return sorted(pre_t), sorted(dec_t)


def bench_train(m, B, T, reps, warmup):
    params = {k: v.clone().requires_grad_(True) for k, v in m.p.items() if "correction_bias" not in k}
    m.p.update(params)
    opt = torch.optim.AdamW(params.values(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    gen = torch.Generator().manual_seed(99)
    V = m.c["vocab_size"]

    def step():
        ids = torch.randint(0, V, (B, T), generator=gen)
        opt.zero_grad(set_to_none=True)
        logits = m.forward(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
        opt.step()
    return timed(step, reps, warmup=warmup)


def check(m, expected_path):
    """Logits of the fixture's input_ids against the expected ones, and the cached path."""
    exp = read_safetensors(expected_path)
    ids, want = exp["input_ids"].clone(), exp["logits"].float()
    with torch.inference_mode():
        got = m.forward(ids)
        rel = ((got - want).abs().max() / want.abs().max()).item()
        # prefill + absorbed decode must give the same last-position logits as the full forward
        cache, P = {}, ids.shape[1] // 2
        steps = [m.forward(ids[:1, :P], cache=cache, last_only=True)[0, -1]]
        for j in range(P, ids.shape[1]):
            steps.append(m.forward(ids[:1, j:j + 1], cache=cache, start=j)[0, -1])
        cached_rel = ((torch.stack(steps) - got[0, P - 1:]).abs().max() / want.abs().max()).item()
    ok = rel <= 1e-4 and cached_rel <= 1e-4
    print(json.dumps({"check": "ok" if ok else "FAILED", "logits_max_rel_err": rel,
                      "cached_decode_max_rel_err": cached_rel, "tolerance": 1e-4}))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--train-warmup", type=int, default=3, help="untimed training steps (default 3)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-inference", action="store_true", help="with --train: time training only")
    ap.add_argument("--check", metavar="EXPECTED.safetensors", help="verify logits and exit")
    a = ap.parse_args()
    if a.train and a.weights != "f32":
        sys.exit("torch_baseline.py: error: --train needs --weights f32")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    m = Model(a.model, torch.bfloat16 if a.weights == "bf16" else torch.float32)
    load_s = time.perf_counter() - t0
    if a.check:
        return check(m, a.check)
    out = {"engine": "pytorch", "torch": torch.__version__, "weights": a.weights,
           "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
           "load_seconds": load_s, "prompt": a.prompt, "decode_tokens": a.decode, "reps": a.reps}
    if not a.no_inference:
        pre, dec = bench_inference(m, a.prompt, a.decode, a.reps)
        out.update(prefill_tokens_per_s=a.prompt / median(pre), prefill_tokens_per_s_best=a.prompt / pre[0],
                   prefill={"seconds": pre})
        if a.decode:
            out.update(decode_tokens_per_s=a.decode / median(dec), decode_tokens_per_s_best=a.decode / dec[0],
                       decode={"seconds": dec})
    if a.train:
        tr = bench_train(m, a.batch, a.seq, a.reps, a.train_warmup)
        out.update(train_tokens_per_s=a.batch * a.seq / median(tr), train_tokens_per_s_best=a.batch * a.seq / tr[0],
                   train={"seconds": tr}, batch=a.batch, seq=a.seq)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
