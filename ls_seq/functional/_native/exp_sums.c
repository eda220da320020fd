/* The dense part of a calibration pass on CPU: per row and temperature, the sums of 2^x and (2^x)^2 over the
 * vocabulary, x = s_t * z_j - s_t * m (s_t = log2(e) / T_t, m the row maximum), in one read of the logits.
 *
 * Built by ls_seq/functional/native.py with the platform's C compiler (-O3 -march=native) and called through
 * ctypes, which releases the GIL, so rows are split across Python threads. No libtorch headers: it is plain
 * C99 on float arrays. The torch path in calibration.py computes the same sums with one ATen exp2 pass per
 * temperature; this kernel exists because the exponentials are the whole cost of that pass and ATen writes
 * and reads the chunk once per temperature and operation.
 *
 * x = s_t * (z_j - m): the difference first, exact for the logits near the maximum that dominate the sum, so
 * their 2^x carry one rounding of x, not that of s_t * z_j.
 * 2^x: x = n + f with n = rint(x), |f| <= 1/2; 2^f by the degree-6 polynomial of Cephes' exp2f (relative error
 * 1.7e-7 on [-1/2, 1/2]); 2^n put into the exponent bits. x <= 0 always (m is the maximum); below -126, where
 * 2^x is under float32's smallest normal, x is raised to -126 (so is a NaN, whose row is flagged non-finite): such a term adds at most 1.2e-38 to a sum that
 * is at least 1 (the maximum's own term). The loops are written so that GCC/Clang vectorise them without
 * -ffast-math: 16 independent float lanes per block of 1024 logits, each block's lanes added in a fixed order
 * into double accumulators. A row's result therefore depends only on the row, not on which rows share the
 * call (chunk and batch invariance), and its rounding error is that of a 64-term float sum per lane.
 */
#include <stdint.h>
#include <string.h>

#define LANES 16
#define BLOCK 1024
#define SCAN 256

static inline float exp2_nonpositive(float x) {
    x = x > -126.0f ? x : -126.0f; /* a NaN compares false and becomes -126: every step below stays defined */
    float n = __builtin_rintf(x);
    float f = x - n;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Bit 31 set iff x is an infinity or a NaN: the exponent field plus one carries into bit 31 only when the
 * field is all ones. Integer and/add only, so the scan vectorises without compares. */
static inline uint32_t nonfinite_bit(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x7f800000u) + 0x00800000u;
}

/* One block of `len` logits (len a multiple of LANES) at one temperature into (*sum, *sq); with `check` (a
 * constant at each call, so each call site compiles to its own loop) also ORs the block's nonfinite_bit into
 * *bad: on integer ports, beside the floating-point work, it costs about 4% of one temperature. */
static inline void block_lanes(const float *z, int64_t len, float s, float m, int squares, double *sum, double *sq,
                               const int check, uint32_t *bad) {
    float acc[LANES] = {0}, acc2[LANES] = {0};
    uint32_t flags[LANES] = {0};
    for (int64_t j = 0; j < len; j += LANES) {
        for (int l = 0; l < LANES; ++l) {
            float e = exp2_nonpositive(s * (z[j + l] - m));
            acc[l] += e;
            acc2[l] += e * e;
            if (check) flags[l] |= nonfinite_bit(z[j + l]);
        }
    }
    double total = 0.0, total2 = 0.0;
    for (int l = 0; l < LANES; ++l) {
        total += acc[l];
        total2 += acc2[l];
        if (check) *bad |= flags[l];
    }
    *sum += total;
    if (squares) *sq += total2;
}

/* For rows r in [0, rows): z + r * row_stride holds `vocab` contiguous float32 logits, m[r] their maximum.
 * Writes out_sum[t * out_stride + r] = sum_j 2^(s_t (z_j - m)) and, when out_sq is not NULL,
 * out_sq[t * out_stride + r] = sum_j 4^(s_t (z_j - m)), both rounded to float32 once, and out_finite[r] = 1 if
 * no logit of the row is an infinity or a NaN (checked while the first temperature reads the row), else 0. */
void ls_seq_exp_sums(const float *z, int64_t rows, int64_t vocab, int64_t row_stride, const float *m,
                     const double *scales, int64_t n_t, float *out_sum, float *out_sq, int64_t out_stride,
                     uint8_t *out_finite) {
    int squares = out_sq != 0;
    int64_t whole = vocab - vocab % LANES;
    for (int64_t r = 0; r < rows; ++r) {
        const float *row = z + r * row_stride;
        float mr = m[r];
        uint32_t bad = 0;
        for (int64_t t = 0; t < n_t; ++t) {
            float s = (float)scales[t];
            double sum = 0.0, sq = 0.0;
            for (int64_t start = 0; start < whole; start += BLOCK) {
                int64_t len = whole - start < BLOCK ? whole - start : BLOCK;
                if (t == 0)
                    block_lanes(row + start, len, s, mr, squares, &sum, &sq, 1, &bad);
                else
                    block_lanes(row + start, len, s, mr, squares, &sum, &sq, 0, &bad);
            }
            for (int64_t j = whole; j < vocab; ++j) {
                float e = exp2_nonpositive(s * (row[j] - mr));
                sum += e;
                sq += (double)e * e;
                bad |= nonfinite_bit(row[j]);
            }
            out_sum[t * out_stride + r] = (float)sum;
            if (squares) out_sq[t * out_stride + r] = (float)sq;
        }
        out_finite[r] = !(bad >> 31);
    }
}

/* For rows r in [0, rows) of z as above: the k largest logits, largest first, with their indices:
 * out_values[r * k + i], out_indices[r * k + i].
 *
 * One read of the row: 256 logits at a time are compared with the current k-th largest (vectorised); only a
 * block holding a larger one is scanned again and inserted, element by element, into the sorted top k. An insertion goes after
 * the entries equal to it, so among tied values the lowest index comes first: out_indices[r * k] is the first
 * maximum of the row, torch.max's arg-max. A NaN is never inserted (it compares false); finiteness is
 * ls_seq_exp_sums' check. Requires 1 <= k <= vocab. */
void ls_seq_row_topk(const float *z, int64_t rows, int64_t vocab, int64_t row_stride, int64_t k, float *out_values,
                     int64_t *out_indices) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *row = z + r * row_stride;
        float *val = out_values + r * k;
        int64_t *idx = out_indices + r * k;
        int64_t filled = 0;
        for (int64_t start = 0; start < vocab; start += SCAN) {
            int64_t len = vocab - start < SCAN ? vocab - start : SCAN;
            float threshold = filled == k ? val[k - 1] : -__builtin_inff();
            int above = filled < k;
            if (len == SCAN) {
                int32_t any[LANES] = {0};
                for (int64_t j = 0; j < SCAN; j += LANES) {
                    for (int l = 0; l < LANES; ++l) {
                        float x = row[start + j + l];
                        any[l] |= x > threshold;
                    }
                }
                for (int l = 0; l < LANES; ++l) above |= any[l];
            } else {
                for (int64_t l = 0; l < len; ++l) {
                    float x = row[start + l];
                    above |= x > threshold;
                }
            }
            if (!above) continue;
            for (int64_t l = 0; l < len; ++l) {
                float x = row[start + l];
                if (filled == k && !(x > val[k - 1])) continue;
                if (x != x) continue; /* NaN */
                int64_t at = filled < k ? filled : k - 1; /* the slot to fill, then move up */
                while (at > 0 && x > val[at - 1]) {
                    val[at] = val[at - 1];
                    idx[at] = idx[at - 1];
                    --at;
                }
                val[at] = x;
                idx[at] = start + l;
                if (filled < k) ++filled;
            }
        }
        /* A row of NaN fills nothing: its slots are set to NaN (ls_seq_exp_sums flags the row). */
        for (int64_t i = filled; i < k; ++i) {
            val[i] = __builtin_nanf("");
            idx[i] = 0;
        }
    }
}
