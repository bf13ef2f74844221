#!/usr/bin/env python3
# Emulates SmallBatchGemvKernel (SmallBatchLinear, kernels/cuda/gemm.cu) in pure Python, per
# (block, warp, lane), with the kernel's index formulas, and compares it with a double-precision
# y = beta * y0 + x · wᵀ. No GPU needed. Checks:
#  - the row/chunk index math: every 16-byte weight load lies in [0, out*in) and each is read
#    exactly once, for every shape below (plus the Llama-3-8B shapes, done per row and per
#    row-chunk pattern, which together imply the same); x reads stay in [0, n*in);
#  - the numerics: fp32 fmaf per lane in the kernel's order, the xor-butterfly warp sum, the
#    beta epilogue for fp32 and bf16 y (bf16 rounded to nearest even), against the double
#    reference with the tolerances of SmallBatchLinearTest (tests/gpu/cuda_gemm_test.cc);
#  - the host-side guards: SmallBatchLinearFits and the out_features bound vs gridDim.x.
# fp32 rounding goes through struct ('f'); fmaf(a, b, c) is one rounding of a*b + c, exact
# here because a*b of two bf16 values fits in 16 bits. Warps run one after another, so this
# does not check timing or caching (evict-first / L1), only what is read and summed.
#   python3 tests/gpu/emulate_small_batch_linear.py [--seed S] [--full]
#   --full: numerics on every output row (default: the rows of CTAs 0, 1, one in the middle
#   and the last; the index checks always cover every row).
import argparse, math, random, struct, sys

WARPS = 4          # kGemvWarps (gemm.cu:23)
UNROLL = 4         # kGemvUnroll (gemm.cu:24)
MAX_ROWS = 8       # kSmallBatchRows (cuda_kernels.h:175)
GRID_X_MAX = 2**31 - 1  # CUDA gridDim.x limit

_F = struct.Struct("<f")
_U = struct.Struct("<I")

def f32(v):
    return _F.unpack(_F.pack(v))[0]

def bf16_bits(v):
    """float -> bf16 bits, round to nearest even (__float2bfloat16_rn, F32ToBf16)."""
    u = _U.unpack(_F.pack(v))[0]
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF

def bf16(v):
    return _F.unpack(_U.pack(bf16_bits(v) << 16))[0]

def fits(x_addr, w_addr, n, in_f):
    # SmallBatchLinearFits (gemm.cu:95-97)
    return 1 <= n <= MAX_ROWS and in_f % 8 == 0 and x_addr % 16 == 0 and w_addr % 16 == 0

def host_accepts(in_f, out_f):
    # the out_features bound of SmallBatchLinear (gemm.cu:104-105)
    return in_f > 0 and out_f > 0 and out_f <= (2**31 - 1) * WARPS

def grid_x(out_f):
    return (out_f + WARPS - 1) // WARPS  # internal::CeilDiv(out, kGemvWarps) (gemm.cu:84)

def warp_rows(out_f):
    """(block, warp, row) for every warp that does not leave at the row check."""
    for block in range(grid_x(out_f)):
        for warp in range(WARPS):               # threadIdx.x >> 5, 128 threads (gemm.cu:86)
            row = block * WARPS + warp          # gemm.cu:46
            if row >= out_f: continue           # gemm.cu:47, whole warp returns
            yield block, warp, row

def lane_chunks(lane, chunks):
    """Chunk indices (16-byte units of the row) lane reads, in the order it accumulates them."""
    order = []
    c = lane                                               # gemm.cu:53
    while c + 32 * (UNROLL - 1) < chunks:                  # gemm.cu:56
        order += [c + 32 * u for u in range(UNROLL)]       # loads gemm.cu:59, used in u order :61
        c += 32 * UNROLL                                   # gemm.cu:56 increment
    while c < chunks:                                      # gemm.cu:63
        order.append(c)
        c += 32
    return order

def check_indices(n, in_f, out_f, exhaustive):
    """Index checks; returns a list of error strings."""
    errs = []
    chunks = in_f // 8                                     # gemm.cu:49
    # Per row: the lanes' chunks are [0, chunks), each once; each step of the unrolled loop is
    # 32 consecutive chunks (one 512-byte coalesced request per u).
    seen = [0] * chunks
    for lane in range(32):
        for c in lane_chunks(lane, chunks):
            if not 0 <= c < chunks: errs.append(f"lane {lane} reads chunk {c} of {chunks}")
            else: seen[c] += 1
            # x + b * in + c * 8 for b < N (gemm.cu:35): 8 elements in [0, n*in)
            for b in (0, n - 1):
                lo = b * in_f + c * 8
                if lo < 0 or lo + 8 > n * in_f: errs.append(f"x read [{lo},{lo + 8}) out of range")
    bad = [c for c in range(chunks) if seen[c] != 1]
    if bad: errs.append(f"in={in_f}: chunks read != once: {bad[:8]}")
    # Per launch: each row in [0, out) taken by exactly one warp.
    rows = [0] * out_f
    for _, _, row in warp_rows(out_f):
        rows[row] += 1
    if any(r != 1 for r in rows): errs.append(f"out={out_f}: rows not taken exactly once")
    if grid_x(out_f) > GRID_X_MAX: errs.append(f"grid {grid_x(out_f)} > gridDim.x limit")
    if exhaustive:
        # Every uint4 of w: wr = w + row * in (gemm.cu:48) as uint4*, load wr + c (gemm.cu:59/63).
        total = out_f * in_f // 8
        count = bytearray(total)
        for _, _, row in warp_rows(out_f):
            if (row * in_f) % 8: errs.append(f"row {row} base not 16-byte aligned")
            base = row * in_f // 8
            for lane in range(32):
                for c in lane_chunks(lane, chunks):
                    q = base + c
                    if not 0 <= q < total: errs.append(f"w uint4 {q} outside [0, {total})")
                    else: count[q] += 1
        if any(v != 1 for v in count):
            errs.append(f"w: {sum(1 for v in count if v != 1)} uint4s not read exactly once")
    return errs

def emulate_acc(n, in_f, x, w, row):
    """acc[b] of lane 0 after WarpSum for one output row (gemm.cu:50-65)."""
    chunks = in_f // 8
    lanes = []
    for lane in range(32):
        acc = [0.0] * n                                    # gemm.cu:51-52
        for c in lane_chunks(lane, chunks):
            wo = row * in_f + c * 8                        # wr + c (gemm.cu:48, 59/63)
            wf = w[wo:wo + 8]                              # Unpack8 (gemm.cu:31)
            for b in range(n):
                xo = b * in_f + c * 8                      # x + b * in + c * 8 (gemm.cu:35)
                a = acc[b]
                for j in range(8):                         # fmaf in j order (gemm.cu:37)
                    a = f32(wf[j] * x[xo + j] + a)
                acc[b] = a
        lanes.append(acc)
    # internal::WarpSum: v += __shfl_xor_sync(~0, v, o) for o = 16, 8, 4, 2, 1 (cuda_common.cuh:86)
    o = 16
    while o > 0:
        lanes = [[f32(lanes[l][b] + lanes[l ^ o][b]) for b in range(n)] for l in range(32)]
        o >>= 1
    return lanes[0]                                        # lane == 0 writes (gemm.cu:66)

def epilogue(acc, y0, beta, out_f32):
    if out_f32:
        # *yo = beta != 0 ? acc + beta * *yo : acc (gemm.cu:71; one rounding, as nvcc's fma)
        return f32(acc + beta * y0) if beta != 0.0 else acc
    # prior = beta != 0 ? beta * float(*yo) : 0; *yo = rn(acc + prior) (gemm.cu:74-75)
    prior = f32(beta * y0) if beta != 0.0 else 0.0
    return bf16(f32(acc + prior))

def numeric_rows(out_f, full):
    if full: return list(range(out_f))
    g = grid_x(out_f)
    blocks = sorted({0, 1, g // 2, g - 1} & set(range(g)))
    return [r for b in blocks for r in range(b * WARPS, b * WARPS + WARPS) if r < out_f]

def run_case(n, in_f, out_f, rng, full):
    x = [bf16(rng.uniform(-1, 1)) for _ in range(n * in_f)]
    w = [bf16(rng.uniform(-0.2, 0.2)) for _ in range(out_f * in_f)]
    y0 = [bf16(rng.uniform(-1, 1)) for _ in range(n * out_f)]
    worst = {}
    ok = True
    for row in numeric_rows(out_f, full):
        acc = emulate_acc(n, in_f, x, w, row)
        for b in range(n):
            dot = sum(x[b * in_f + k] * w[row * in_f + k] for k in range(in_f))
            mag0 = sum(abs(x[b * in_f + k] * w[row * in_f + k]) for k in range(in_f))
            for out_f32 in (False, True):
                for beta in (0.0, 1.0):
                    yv = y0[b * out_f + row]               # y + b * out + row (gemm.cu:70/73)
                    got = epilogue(acc[b], yv, beta, out_f32)
                    ref = beta * yv + dot
                    mag = mag0 + abs(beta * yv)
                    # EXPECT_ALL_CLOSE(got, ref, rtol, 1e-4 * mag + 1e-7) (cuda_gemm_test.cc:120/127)
                    rtol = 1e-5 if out_f32 else 8e-3
                    tol = rtol * abs(ref) + 1e-4 * mag + 1e-7
                    err = abs(got - ref)
                    key = ("f32" if out_f32 else "bf16", beta)
                    worst[key] = max(worst.get(key, 0.0), err / tol)
                    if not err <= tol: ok = False
    return ok, worst

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="numerics on every output row")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    ok = True

    # Host guards.
    host_errs = []
    if not fits(0, 0, 1, 64) or fits(0, 0, 0, 64) or fits(0, 0, 9, 64) or fits(0, 0, 1, 60) \
            or fits(2, 0, 1, 64) or fits(0, 8, 1, 64):
        host_errs.append("SmallBatchLinearFits")
    for out_f in (1, 5, 577, 128256, 2**31 - 1, (2**31 - 1) * WARPS, (2**31 - 1) * WARPS + 1,
                  2**33, (2**32 - 1) * WARPS):
        if host_accepts(64, out_f) and grid_x(out_f) > GRID_X_MAX:
            host_errs.append(f"out={out_f} accepted but grid {grid_x(out_f)} > {GRID_X_MAX}")
    print("host guards:", "OK" if not host_errs else "FAIL " + "; ".join(host_errs))
    ok = ok and not host_errs

    # Index checks at Llama-3-8B shapes (rows and per-row chunk pattern; offsets in int64).
    for in_f, out_f in ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096),
                        (4096, 128256)):
        errs = check_indices(8, in_f, out_f, exhaustive=False)
        span = out_f * in_f
        print(f"index in={in_f:5d} out={out_f:6d} grid={grid_x(out_f):5d} "
              f"max offset {span - 1} ({'>' if span > 2**31 else '<'} 2^31)",
              "OK" if not errs else "FAIL " + "; ".join(errs[:3]))
        ok = ok and not errs

    # The test shapes: exhaustive index check, then numerics. 800 (100 chunks) sends lanes 0-3
    # through the unrolled loop and the rest to the tail only; 1816 (227 chunks) gives lanes 0-2
    # two unrolled steps and lanes 3-31 one unrolled step and three tail steps.
    ins = (64, 576, 1032, 4096, 800, 1816)
    outs = (1, 5, 577)
    index_ok = True
    for in_f in ins:
        for out_f in outs:
            errs = check_indices(8, in_f, out_f, exhaustive=True)
            index_ok = index_ok and not errs
            if errs: print(f"index in={in_f} out={out_f} FAIL", "; ".join(errs[:3]))
    print(f"index (exhaustive, every uint4 of w once, in {ins} x out {outs}):",
          "OK" if index_ok else "FAIL")
    ok = ok and index_ok
    for n in range(1, MAX_ROWS + 1):
        for in_f in ins:
            for out_f in outs:
                good, worst = run_case(n, in_f, out_f, rng, args.full)
                ok = ok and good
                print(f"n={n} in={in_f:4d} out={out_f:3d} rows={len(numeric_rows(out_f, args.full)):3d} "
                      "err/tol " + " ".join(f"{k[0]}/b{int(k[1])}={v:.2g}"
                                            for k, v in sorted(worst.items())),
                      "OK" if good else "MISMATCH")
    print("ALL OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)

main()
