#!/usr/bin/env python3
# Emulates PrefillAttentionKernel (kernels/cuda/prefill_attention.cu) in pure Python, lane by
# lane, with the PTX fragment layouts of ldmatrix and mma.m16n8k16, and compares it with a
# direct softmax(q·kᵀ)·v. Checks the index math (swizzle, fragment addressing, masks, online
# softmax) without a GPU; warps run one after another, so it does not check synchronization.
#   python3 tests/gpu/emulate_prefill_attention.py SEED
#   env: WARPS=4|8, MA=1|2 (16-row groups per warp), MAXQ=max queries per sequence
import math, random, sys
random.seed(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
import os
WARPS = int(os.environ.get("WARPS", "4")); MA = int(os.environ.get("MA", "1"))
BM, BN, THREADS = 16 * WARPS * MA, 64, 32 * WARPS

def swz(D, row, chunk): return row * D + ((chunk ^ (row & 7)) << 3)

def ldmatrix_x4(smem, addrs, trans):
    regs = [[None]*32 for _ in range(4)]
    for i in range(4):
        M = [smem[addrs[8*i + r]: addrs[8*i + r] + 8] for r in range(8)]
        for l in range(32):
            g, q = l // 4, l % 4
            if not trans: regs[i][l] = (M[g][2*q], M[g][2*q+1])
            else: regs[i][l] = (M[2*q][g], M[2*q+1][g])
    return regs

def mma(d, a, b0, b1):
    A = [[0.0]*16 for _ in range(16)]; B = [[0.0]*8 for _ in range(16)]
    for l in range(32):
        g, q = l // 4, l % 4
        for j in range(2):
            A[g][2*q+j] = a[0][l][j]; A[g+8][2*q+j] = a[1][l][j]
            A[g][2*q+8+j] = a[2][l][j]; A[g+8][2*q+8+j] = a[3][l][j]
            B[2*q+j][g] = b0[l][j]; B[2*q+8+j][g] = b1[l][j]
    for l in range(32):
        g, q = l // 4, l % 4
        for j in range(2):
            d[l][j] += sum(A[g][k]*B[k][2*q+j] for k in range(16))
            d[l][2+j] += sum(A[g+8][k]*B[k][2*q+j] for k in range(16))

def load_tile(smem, D, rows, row0, limit, row_ptr, mem):
    C = D // 8
    for i in range(rows * C // THREADS):
        for tid in range(THREADS):
            idx = tid + i * THREADS
            r, c = idx // C, idx % C
            valid = row0 + r < limit
            src = row_ptr(row0 + r if valid else 0) + c * 8
            off = swz(D, r, c)
            smem[off:off+8] = mem[src:src+8] if valid else [0.0]*8

def run_cta(D, q_mem, q_base, q_stride, len_q, m_start, len_k, start, kv_off, k_mem, v_mem, scale_log2, out, h):
    sQ = [0.0]*(BM*D); sK = [0.0]*(BN*D); sV = [0.0]*(BN*D)
    m_end = min(m_start + BM, len_q)
    n_keys = min(len_k, start + m_end)
    n_tiles = (n_keys + BN - 1) // BN
    load_tile(sQ, D, BM, 0, len_q - m_start, lambda r: q_base + (m_start + r) * q_stride, q_mem)
    load_tile(sK, D, BN, 0, len_k, kv_off, k_mem)
    first_qpos = start + m_start
    for warp in range(WARPS):
        warp_row0 = warp * 16 * MA
        o = [[[[0.0]*4 for _ in range(32)] for _ in range(D // 8)] for _ in range(MA)]
        row_max = [[[-math.inf]*2 for _ in range(32)] for _ in range(MA)]
        row_sum = [[[0.0]*2 for _ in range(32)] for _ in range(MA)]
        for t in range(n_tiles):
            n_start = t * BN
            load_tile(sK, D, BN, n_start, len_k, kv_off, k_mem)  # warps run one after another here
            load_tile(sV, D, BN, n_start, len_k, kv_off, v_mem)
            s = [[[[0.0]*4 for _ in range(32)] for _ in range(BN // 8)] for _ in range(MA)]
            for kk in range(D // 16):
                qf = [ldmatrix_x4(sQ, [swz(D, warp_row0 + a*16 + (l & 15), kk*2 + (l >> 4)) for l in range(32)], False)
                      for a in range(MA)]
                for np_ in range(BN // 16):
                    addrs = [swz(D, np_*16 + (l & 7) + ((l >> 4) << 3), kk*2 + ((l >> 3) & 1)) for l in range(32)]
                    kf = ldmatrix_x4(sK, addrs, False)
                    for a in range(MA):
                        mma(s[a][2*np_], qf[a], kf[0], kf[1]); mma(s[a][2*np_+1], qf[a], kf[2], kf[3])
            need_mask = n_start + BN - 1 > first_qpos or n_start + BN > len_k
            for a in range(MA):
                for l in range(32):
                    qpos_base = start + m_start + warp_row0 + (l >> 2)
                    for nt in range(BN // 8):
                        for e in range(4):
                            x = s[a][nt][l][e] * scale_log2
                            if need_mask:
                                key = n_start + nt*8 + ((l & 3) << 1) + (e & 1)
                                qpos = qpos_base + a * 16 + (0 if e < 2 else 8)
                                if key > qpos or key >= len_k: x = -math.inf
                            s[a][nt][l][e] = x
            for a in range(MA):
                for r in range(2):
                    mx = [max(max(s[a][nt][l][2*r], s[a][nt][l][2*r+1]) for nt in range(BN//8)) for l in range(32)]
                    mx = [max(mx[l], mx[l ^ 1]) for l in range(32)]
                    mx = [max(mx[l], mx[l ^ 2]) for l in range(32)]
                    for l in range(32):
                        new_max = max(row_max[a][l][r], mx[l])
                        base = 0.0 if new_max == -math.inf else new_max
                        alpha = 2 ** (row_max[a][l][r] - base) if row_max[a][l][r] != -math.inf else 0.0
                        row_max[a][l][r] = new_max
                        sm = 0.0
                        for nt in range(BN // 8):
                            for j in (2*r, 2*r+1):
                                v = s[a][nt][l][j]
                                s[a][nt][l][j] = 0.0 if v == -math.inf else 2 ** (v - base)
                                sm += s[a][nt][l][j]
                        row_sum[a][l][r] = row_sum[a][l][r] * alpha + sm
                        for dt in range(D // 8):
                            o[a][dt][l][2*r] *= alpha; o[a][dt][l][2*r+1] *= alpha
            for kk in range(BN // 16):
                pf = [[[(s[a][2*kk][l][0], s[a][2*kk][l][1]) for l in range(32)],
                       [(s[a][2*kk][l][2], s[a][2*kk][l][3]) for l in range(32)],
                       [(s[a][2*kk+1][l][0], s[a][2*kk+1][l][1]) for l in range(32)],
                       [(s[a][2*kk+1][l][2], s[a][2*kk+1][l][3]) for l in range(32)]] for a in range(MA)]
                for dp in range(D // 16):
                    addrs = [swz(D, kk*16 + (l & 7) + (((l >> 3) & 1) << 3), dp*2 + (l >> 4)) for l in range(32)]
                    vf = ldmatrix_x4(sV, addrs, True)
                    for a in range(MA):
                        mma(o[a][2*dp], pf[a], vf[0], vf[1]); mma(o[a][2*dp+1], pf[a], vf[2], vf[3])
        for a in range(MA):
            for r in range(2):
                ls = [row_sum[a][l][r] for l in range(32)]
                ls = [ls[l] + ls[l ^ 1] for l in range(32)]
                ls = [ls[l] + ls[l ^ 2] for l in range(32)]
                for l in range(32):
                    row = m_start + warp_row0 + a * 16 + (l >> 2) + r*8
                    if row >= len_q: continue
                    inv = 1.0 / ls[l] if ls[l] > 0 else 0.0
                    for dt in range(D // 8):
                        col = dt*8 + ((l & 3) << 1)
                        out[(row, h, col)] = o[a][dt][l][2*r] * inv
                        out[(row, h, col+1)] = o[a][dt][l][2*r+1] * inv

def main():
    D = random.choice([64, 128])
    n_kv, G = random.choice([(1, 1), (2, 2), (1, 3)])
    H = n_kv * G
    paged = random.random() < 0.5
    len_q = random.randint(1, int(os.environ.get("MAXQ", "90")))
    start = random.randint(0, 70)
    len_k = start + len_q
    bs = 16
    q_stride = H * D + 8
    q_mem = [random.uniform(-1, 1) for _ in range(len_q * q_stride)]
    if paged:
        nb = (len_k + bs - 1) // bs + 2
        table = list(range(nb)); random.shuffle(table)
        k_mem = [random.uniform(-1, 1) for _ in range(nb * bs * n_kv * D)]
        v_mem = [random.uniform(-1, 1) for _ in range(nb * bs * n_kv * D)]
        def key_off(j, kvh):
            slot = table[j // bs] * bs + j % bs
            return (slot * n_kv + kvh) * D
    else:
        kv_stride = n_kv * D
        k_mem = [random.uniform(-1, 1) for _ in range(len_k * kv_stride)]
        v_mem = [random.uniform(-1, 1) for _ in range(len_k * kv_stride)]
        def key_off(j, kvh): return j * kv_stride + kvh * D
    scale = 1 / math.sqrt(D)
    out = {}
    h = random.randrange(H)
    kvh = h // G
    for m_block in range((len_q + BM - 1) // BM):
        run_cta(D, q_mem, h * D, q_stride, len_q, m_block * BM, len_k, start,
                lambda j: key_off(j, kvh), k_mem, v_mem, scale * 1.4426950408889634, out, h)
    worst = 0.0
    for i in range(len_q):
        qp = start + i
        sc = []
        for j in range(qp + 1):
            sc.append(sum(q_mem[i*q_stride + h*D + d] * k_mem[key_off(j, kvh) + d] for d in range(D)) * scale)
        mx = max(sc); e = [math.exp(x - mx) for x in sc]; z = sum(e)
        for d in range(D):
            ref = sum(e[j] / z * v_mem[key_off(j, kvh) + d] for j in range(qp + 1))
            worst = max(worst, abs(ref - out[(i, h, d)]))
    print(f"D={D} n_kv={n_kv} G={G} paged={paged} len_q={len_q} start={start} h={h} max_err={worst:.2e}",
          "OK" if worst < 1e-9 else "MISMATCH")

main()
