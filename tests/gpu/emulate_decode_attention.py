#!/usr/bin/env python3
# Emulates both DecodeAttention implementations of kernels/cuda/decode_attention.cu thread by
# thread in pure Python (lane groups, shuffles, shared-memory layouts and reductions, the
# partition merge) and compares them with a direct softmax(q·kᵀ)·v over a shuffled paged
# cache. No GPU needed.
#  - registers variant (DecodeRegistersKernel);
#  - pipelined variant (DecodePipelinedKernel): row offsets, the swizzled cp.async ring and
#    its step -> slot schedule, run twice: copies landing at issue time ("eager") and only
#    when the wait_group that covers them returns ("lazy"); uninitialized shared memory is
#    NaN, so reading a slot too early, or after it was refilled, shows up as an error.
#   python3 tests/gpu/emulate_decode_attention.py SEED
import math, random, sys
random.seed(int(sys.argv[1]))
THREADS, WARPS = 128, 4
TILE_BYTES, STAGES = 8192, 4
NAN = float("nan")

def lanes_per_row(d, g):
    l = 4
    while l < d // 8 and l * 64 < g * d: l *= 2
    return l

def registers_cta(c, b, kvh, split):
    """DecodeRegistersKernel for one CTA; returns (s_red, smax, ssum) or None when n <= 0."""
    D, G, n_kv, bs, partition = c["D"], c["G"], c["n_kv"], c["bs"], c["partition"]
    K, V, q, sl2, H = c["K"], c["V"], c["q"], c["sl2"], c["H"]
    seq_len = c["lens"][b]; begin = split * partition
    n = min(begin + partition, seq_len) - begin; h0 = kvh * G
    C = D // 8; L = lanes_per_row(D, G); CPL = C // L
    def row_offset(pos):
        slot = c["tables"][b][pos // bs] * bs + pos % bs
        return slot * n_kv * D + kvh * D
    if n <= 0: return None
    scores = [[None] * partition for _ in range(G)]
    rows_per_warp = 32 // L; rows_per_pass = WARPS * rows_per_warp
    base = 0
    while base < n:
        for u in range(2):
            for w in range(WARPS):
                acc = [[0.0] * G for _ in range(32)]
                for lane in range(32):
                    sub = lane % L
                    r = base + u * rows_per_pass + w * rows_per_warp + lane // L
                    for i in range(CPL):
                        cc = sub + L * i
                        for j in range(8):
                            kv = K[row_offset(begin + r) + cc * 8 + j] if r < n else 0.0
                            for g in range(G):
                                acc[lane][g] += q[(b * H + h0 + g) * D + cc * 8 + j] * sl2 * kv
                off = 1
                while off < L:
                    acc = [[acc[l][g] + acc[l ^ off][g] for g in range(G)] for l in range(32)]
                    off <<= 1
                for lane in range(32):
                    r = base + u * rows_per_pass + w * rows_per_warp + lane // L
                    if lane % L == 0 and r < n:
                        for g in range(G): scores[g][r] = acc[lane][g]
        base += rows_per_pass * 2
    smax = []; ssum = []
    for g in range(G):
        assert all(scores[g][i] is not None for i in range(n))
        mx = max(scores[g][:n]); e = [2 ** (x - mx) for x in scores[g][:n]]
        scores[g][:n] = e; smax.append(mx); ssum.append(sum(e))
    krg = THREADS // C
    accs = [[[0.0] * 8 for _ in range(G)] for _ in range(THREADS)]
    for tid in range(THREADS):
        chunk = tid % C; group = tid // C
        base = group
        while base < n:
            for u in range(4):
                r = base + u * krg
                if r >= n: break
                for g in range(G):
                    for j in range(8):
                        accs[tid][g][j] += scores[g][r] * V[row_offset(begin + r) + chunk * 8 + j]
            base += krg * 4
    return reduce_cta(accs, D, G, C), smax, ssum

def reduce_cta(accs, D, G, C):
    """In-warp xor shuffles over row groups, then the per-warp s_red rows."""
    s_red = {}
    for w in range(WARPS):
        a = [accs[w * 32 + l] for l in range(32)]
        off = C
        while off < 32:
            a = [[[a[l][g][j] + a[l ^ off][g][j] for j in range(8)] for g in range(G)] for l in range(32)]
            off <<= 1
        for lane in range(C):
            for g in range(G):
                for j in range(8): s_red[(w * G + g) * D + lane * 8 + j] = a[lane][g][j]
    return s_red

def pipelined_cta(c, b, kvh, split, policy):
    """DecodePipelinedKernel for one CTA (grid x = kv head, y = partition)."""
    D, G, n_kv, bs, partition = c["D"], c["G"], c["n_kv"], c["bs"], c["partition"]
    K, V, q, sl2, H = c["K"], c["V"], c["q"], c["sl2"], c["H"]
    seq_len = c["lens"][b]; begin = split * partition
    n = min(begin + partition, seq_len) - begin; h0 = kvh * G
    C = D // 8; L = lanes_per_row(D, G); CPL = C // L
    TK = TILE_BYTES // (D * 2); copies = TK * C // THREADS
    rpw = 32 // L; rpp = WARPS * rpw; rg = THREADS // C
    assert copies >= 1 and TK * C % THREADS == 0 and TK % rpp == 0 and TK % rg == 0
    assert 64 % TK == 0 and partition % TK == 0
    assert WARPS * G * D * 4 <= STAGES * TILE_BYTES  # s_red aliases the ring
    if n <= 0: return None
    table = c["tables"][b]
    s_off = [None] * partition
    for i in range(n):  # threads i, i + 128, ...
        pos = begin + i
        s_off[i] = (table[pos // bs] * bs + pos % bs) * n_kv * D + kvh * D
    swz = lambda row: (row * L) & 7
    ring = [NAN] * (STAGES * TK * D)  # bf16 elements, uninitialized
    n_tiles = (n + TK - 1) // TK
    groups = []  # committed cp.async groups in order: lists of (ring index, value)
    landed = [0]  # groups [0, landed) have been applied
    def issue(step):
        g = []
        if step < 2 * n_tiles:
            values = step >= n_tiles
            row0 = (step - n_tiles if values else step) * TK
            src = V if values else K
            dst = (step % STAGES) * (TK * D)
            for tid in range(THREADS):
                for j in range(copies):
                    idx = tid + j * THREADS; r = idx // C; cc = idx % C
                    valid = row0 + r < n
                    for e in range(8):
                        g.append((dst + r * D + (cc ^ swz(r)) * 8 + e,
                                  src[s_off[row0 + r] + cc * 8 + e] if valid else 0.0))
        groups.append(g)
        if policy == "eager": land(len(groups))
    def land(upto):
        while landed[0] < upto:
            for i, v in groups[landed[0]]: ring[i] = v
            landed[0] += 1
    def wait_group(allowed):  # all but the `allowed` most recent groups complete
        if policy == "lazy": land(len(groups) - allowed)
    for step in range(STAGES - 1): issue(step)
    scores = [[NAN] * partition for _ in range(G)]  # uninitialized shared memory
    for t in range(n_tiles):
        wait_group(STAGES - 2)
        issue(t + STAGES - 1)
        tile = (t % STAGES) * (TK * D)
        for w in range(WARPS):
            for pas in range(TK // rpp):
                acc = [[0.0] * G for _ in range(32)]
                for lane in range(32):
                    sub = lane % L; r = pas * rpp + w * rpw + lane // L
                    for i in range(CPL):
                        cc = sub + L * i
                        for j in range(8):
                            kv = ring[tile + r * D + (cc ^ swz(r)) * 8 + j]
                            for g in range(G):
                                acc[lane][g] += q[(b * H + h0 + g) * D + cc * 8 + j] * sl2 * kv
                off = 1
                while off < L:
                    acc = [[acc[l][g] + acc[l ^ off][g] for g in range(G)] for l in range(32)]
                    off <<= 1
                for lane in range(32):
                    r = pas * rpp + w * rpw + lane // L; key = t * TK + r
                    if lane % L == 0 and key < n:
                        for g in range(G): scores[g][key] = acc[lane][g]
    n_padded = n_tiles * TK
    assert n_padded <= partition
    smax = []; ssum = []
    for g in range(G):
        sc = scores[g]
        mx = max(sc[:n]); e = [2 ** (x - mx) for x in sc[:n]]
        sc[:n] = e; smax.append(mx); ssum.append(sum(e))
        for i in range(n, n_padded): sc[i] = 0.0
    accs = [[[0.0] * 8 for _ in range(G)] for _ in range(THREADS)]
    for t in range(n_tiles, 2 * n_tiles):
        wait_group(STAGES - 2)
        issue(t + STAGES - 1)
        tile = (t % STAGES) * (TK * D); p0 = (t - n_tiles) * TK
        for tid in range(THREADS):
            chunk = tid % C; group = tid // C
            for k in range(TK // rg):
                r = group + k * rg
                v = [ring[tile + r * D + (chunk ^ swz(r)) * 8 + j] for j in range(8)]
                for g in range(G):
                    pr = scores[g][p0 + r]
                    for j in range(8): accs[tid][g][j] += pr * v[j]
    assert all(len(g) == 0 for g in groups[2 * n_tiles:])  # only empty groups after the tiles
    return reduce_cta(accs, D, G, C), smax, ssum

def run(c, variant):
    D, G, H, n_kv, partition = c["D"], c["G"], c["H"], c["n_kv"], c["partition"]
    lens, batch = c["lens"], len(c["lens"])
    n_splits = (max(max(lens), 1) + partition - 1) // partition
    out = [None] * (batch * H * D)
    part_out = {}; part_max = {}; part_sum = {}
    for b in range(batch):
        for kvh in range(n_kv):
            for split in range(n_splits):
                h0 = kvh * G
                if variant == "registers": res = registers_cta(c, b, kvh, split)
                else: res = pipelined_cta(c, b, kvh, split, variant.split("-")[1])
                if res is None:
                    if n_splits == 1:
                        for i in range(G * D): out[(b * H + h0) * D + i] = 0.0
                    else:
                        for g in range(G):
                            r = (b * H + h0 + g) * n_splits + split
                            part_max[r] = -math.inf; part_sum[r] = 0.0
                    continue
                s_red, smax, ssum = res
                for i in range(G * D):
                    g, d = i // D, i % D
                    total = sum(s_red[(w * G + g) * D + d] for w in range(WARPS))
                    h = h0 + g
                    if n_splits == 1: out[(b * H + h) * D + d] = total / ssum[g]
                    else:
                        r = (b * H + h) * n_splits + split
                        part_out[r * D + d] = total
                        if d == 0: part_max[r] = smax[g]; part_sum[r] = ssum[g]
    if n_splits > 1:
        for b in range(batch):
            for h in range(H):
                r0 = (b * H + h) * n_splits
                used = min(n_splits, (lens[b] + partition - 1) // partition)
                mx = max([part_max[r0 + s] for s in range(used)], default=-math.inf)
                for d in range(D):
                    num = den = 0.0
                    for s in range(used):
                        w = 2 ** (part_max[r0 + s] - mx)
                        num += w * part_out[(r0 + s) * D + d]; den += w * part_sum[r0 + s]
                    out[(b * H + h) * D + d] = num / den if den > 0 else 0.0
    return out, n_splits

def main():
    D = random.choice([64, 128]); G = random.choice([1, 3, 4, 8]); n_kv = random.choice([1, 2])
    H = n_kv * G; bs = random.choice([16, 16, 5])
    batch = random.randint(1, 3)
    lens = [random.choice([0, 1, 16, 17, 33, random.randint(1, 700), random.randint(1, 700)])
            for _ in range(batch)]
    partition = random.choice([64, 64, 128, 256, 512])
    max_len = max(max(lens), 1)
    mbps = max(1, (max_len + bs - 1) // bs)
    nb = batch * mbps
    ids = list(range(nb)); random.shuffle(ids)
    tables = [ids[b*mbps:(b+1)*mbps] for b in range(batch)]
    K = [random.uniform(-1, 1) for _ in range(nb * bs * n_kv * D)]
    V = [random.uniform(-1, 1) for _ in range(nb * bs * n_kv * D)]
    q = [random.uniform(-2, 2) for _ in range(batch * H * D)]
    scale = 1 / math.sqrt(D)
    c = dict(D=D, G=G, H=H, n_kv=n_kv, bs=bs, lens=lens, partition=partition, tables=tables,
             K=K, V=V, q=q, sl2=scale * 1.4426950408889634)
    ref = [0.0] * (batch * H * D)
    for b in range(batch):
        for h in range(H):
            kvh = h // G
            offs = [(tables[b][j // bs] * bs + j % bs) * n_kv * D + kvh * D for j in range(lens[b])]
            sc = [sum(q[(b*H+h)*D+d] * K[o+d] for d in range(D)) * scale for o in offs]
            if not sc: continue
            mx = max(sc); e = [math.exp(x - mx) for x in sc]; z = sum(e)
            for d in range(D):
                ref[(b*H+h)*D+d] = sum(e[j] / z * V[offs[j] + d] for j in range(len(sc)))
    ok = True
    for variant in ["registers", "pipelined-eager", "pipelined-lazy"]:
        out, n_splits = run(c, variant)
        bad = sum(1 for x in out if x is None or math.isnan(x))
        worst = max(abs(r - o) for r, o in zip(ref, out)) if bad == 0 else math.inf
        good = bad == 0 and worst < 1e-9
        ok = ok and good
        print(f"{variant:16s} D={D} G={G} n_kv={n_kv} L={lanes_per_row(D, G)} bs={bs} lens={lens} "
              f"partition={partition} splits={n_splits} max_err={worst:.1e}", "OK" if good else "MISMATCH")
    sys.exit(0 if ok else 1)
main()
