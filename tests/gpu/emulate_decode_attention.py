#!/usr/bin/env python3
# Emulates DecodeAttentionKernel + DecodeReduceKernel (kernels/cuda/decode_attention.cu) thread
# by thread in pure Python (lane groups, shuffles, shared-memory reductions, partition merge)
# and compares with a direct softmax(q·kᵀ)·v over a shuffled paged cache. No GPU needed.
#   python3 tests/gpu/emulate_decode_attention.py SEED
import math, random, sys
random.seed(int(sys.argv[1]))
THREADS, WARPS = 128, 4
def lanes_per_row(d, g):
    l = 4
    while l < d // 8 and l * 64 < g * d: l *= 2
    return l
def main():
    D = random.choice([64, 128]); G = random.choice([1, 3, 4, 8]); n_kv = random.choice([1, 2])
    H = n_kv * G; bs = 16
    batch = random.randint(1, 3)
    lens = [random.choice([0, 1, 16, 17, random.randint(1, 700)]) for _ in range(batch)]
    partition = random.choice([64, 128, 512])
    max_len = max(max(lens), 1)
    n_splits = (max_len + partition - 1) // partition
    mbps = max(1, (max_len + bs - 1) // bs)
    nb = batch * mbps
    ids = list(range(nb)); random.shuffle(ids)
    tables = [ids[b*mbps:(b+1)*mbps] for b in range(batch)]
    K = [random.uniform(-1, 1) for _ in range(nb * bs * n_kv * D)]
    V = [random.uniform(-1, 1) for _ in range(nb * bs * n_kv * D)]
    q = [random.uniform(-2, 2) for _ in range(batch * H * D)]
    scale = 1 / math.sqrt(D); sl2 = scale * 1.4426950408889634
    out = [None] * (batch * H * D)
    part_out = {}; part_max = {}; part_sum = {}
    C = D // 8; L = lanes_per_row(D, G); CPL = C // L
    for b in range(batch):
        for kvh in range(n_kv):
            for split in range(n_splits):
                seq_len = lens[b]; begin = split * partition
                end = min(begin + partition, seq_len); n = end - begin; h0 = kvh * G
                def row_offset(pos):
                    slot = tables[b][pos // bs] * bs + pos % bs
                    return slot * n_kv * D + kvh * D
                if n <= 0:
                    if n_splits == 1:
                        for i in range(G * D): out[(b * H + h0) * D + i] = 0.0
                    else:
                        for g in range(G):
                            r = (b * H + h0 + g) * n_splits + split
                            part_max[r] = -math.inf; part_sum[r] = 0.0
                    continue
                scores = [[None] * partition for _ in range(G)]
                rows_per_warp = 32 // L; rows_per_pass = WARPS * rows_per_warp
                base = 0
                while base < n:
                    for u in range(2):
                        # per warp: partial dots per lane, then xor-reduce within L lanes
                        for w in range(WARPS):
                            acc = [[0.0] * G for _ in range(32)]
                            for lane in range(32):
                                sub = lane % L
                                r = base + u * rows_per_pass + w * rows_per_warp + lane // L
                                for i in range(CPL):
                                    c = sub + L * i
                                    for j in range(8):
                                        kv = K[row_offset(begin + r) + c * 8 + j] if r < n else 0.0
                                        for g in range(G):
                                            acc[lane][g] += q[(b * H + h0 + g) * D + c * 8 + j] * sl2 * kv
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
    worst = 0.0
    for b in range(batch):
        for h in range(H):
            kvh = h // G
            offs = [(tables[b][j // bs] * bs + j % bs) * n_kv * D + kvh * D for j in range(lens[b])]
            sc = [sum(q[(b*H+h)*D+d] * K[o+d] for d in range(D)) * scale for o in offs]
            for d in range(D):
                if not sc: ref = 0.0
                else:
                    mx = max(sc); e = [math.exp(x - mx) for x in sc]; z = sum(e)
                    ref = sum(e[j] / z * V[offs[j] + d] for j in range(len(sc)))
                worst = max(worst, abs(ref - out[(b*H+h)*D+d]))
    print(f"D={D} G={G} n_kv={n_kv} L={L} lens={lens} partition={partition} splits={n_splits} max_err={worst:.1e}",
          "OK" if worst < 1e-9 else "MISMATCH")
main()
