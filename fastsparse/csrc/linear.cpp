// The linear product with a weight held as compressed rows, and its gradients: y = x W^T (spmm over the rows), the
// input's gradient gx = gy W (spmm over the transposed structure), the values' gradient (sddmm).
//
// `out`, when not empty, is where a result goes (a buffer kept between calls).
//
// Activations are held in panels: a (batch, features) matrix becomes, for each run of PANEL batch rows, the
// (features, lanes) transpose of that run, one panel after another (the last one narrower when the batch is not a
// multiple of PANEL). Each active weight multiplies a contiguous row of a panel, and a panel (features x 64 floats:
// 256 KB for 1,024 features) stays in cache while every row of the weight reads it, however large the batch.
// A batch of at most PANEL rows is one panel: the plain transpose. `to_panels` and `from_panels` move between layouts.
#include "fastsparse.h"

// One round of a 16 x 16 transpose in registers, for the bit S of the row and column index: from rows a (bit S clear) and
// b (set), lo keeps the columns with bit S clear (a's, then b's, in each run of 2S) and hi those with it set
constexpr int lo_lane(int s, int p) { return (p & s) ? 16 + p - s : p; }
constexpr int hi_lane(int s, int p) { return (p & s) ? 16 + p : p + s; }
#define LANES16(f, s) f(s, 0), f(s, 1), f(s, 2), f(s, 3), f(s, 4), f(s, 5), f(s, 6), f(s, 7), \
                      f(s, 8), f(s, 9), f(s, 10), f(s, 11), f(s, 12), f(s, 13), f(s, 14), f(s, 15)
template <int S> static inline v16 lo(v16 a, v16 b) { return __builtin_shufflevector(a, b, LANES16(lo_lane, S)); }
template <int S> static inline v16 hi(v16 a, v16 b) { return __builtin_shufflevector(a, b, LANES16(hi_lane, S)); }

// r[16] (rows of a 16 x 16 block) becomes its transpose: four rounds, each swapping one bit of the row and column index
template <int S> static inline void swap_bit(v16* r) {
  for (int i = 0; i < 16; ++i) if (!(i & S)) { const v16 a = r[i], b = r[i + S]; r[i] = lo<S>(a, b); r[i + S] = hi<S>(a, b); }
}
static inline void transpose16(v16* r) { swap_bit<8>(r); swap_bit<4>(r); swap_bit<2>(r); swap_bit<1>(r); }

// one vector of 16 sums: lane i holds the sum of r[i]'s lanes. The rounds of `transpose16`, each adding the two vectors it
// makes, so that 16 horizontal sums cost 15 pairs of shuffles; r is overwritten
template <int S> static inline void fold(v16* r) { for (int i = 0; i < S; ++i) r[i] = lo<S>(r[i], r[i + S]) + hi<S>(r[i], r[i + S]); }
static inline v16 reduce16(v16* r) { fold<8>(r); fold<4>(r); fold<2>(r); fold<1>(r); return r[0]; }

// how many entries ahead the product asks for the input row an entry will read: a panel lives in L2, the rows come in any order
constexpr int64_t AHEAD = 8;
// out = A (rows x cols, compressed rows: ptr, idx, val) @ x, both in panels of B lanes
static void csr_mm(const int64_t* __restrict ptr, const int32_t* __restrict idx, const float* __restrict val,
                   const float* __restrict x, float* __restrict out, int64_t rows, int64_t cols, int64_t B) {
  const int64_t np = (B + PANEL - 1) / PANEL;
  #pragma omp parallel for schedule(dynamic, 32) if (ptr[rows] * B > PAR)
  for (int64_t it = 0; it < np * rows; ++it) {    // panel by panel: the panel's input stays in cache for all rows
    const int64_t pn = it / rows, r = it % rows, n = std::min(PANEL, B - pn * PANEL);
    const float* xp = x + pn * PANEL * cols;
    float* o = out + pn * PANEL * rows + r * n;
    const int64_t s = ptr[r], e = ptr[r + 1];
    int64_t b0 = 0;
    for (; b0 + 64 <= n; b0 += 64) {
      v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t k = s; k < e; ++k) {
        const float w = val[k];
        const float* xr = xp + (int64_t)idx[k] * n + b0;
        if (k + AHEAD < e) { const float* pf = xp + (int64_t)idx[k + AHEAD] * n + b0;
          __builtin_prefetch(pf); __builtin_prefetch(pf + 16); __builtin_prefetch(pf + 32); __builtin_prefetch(pf + 48); }
        a0 += w * ld(xr); a1 += w * ld(xr + 16); a2 += w * ld(xr + 32); a3 += w * ld(xr + 48);
      }
      st(o + b0, a0); st(o + b0 + 16, a1); st(o + b0 + 32, a2); st(o + b0 + 48, a3);
    }
    for (; b0 + 16 <= n; b0 += 16) {
      v16 a0 = {0};
      for (int64_t k = s; k < e; ++k) a0 += val[k] * ld(xp + (int64_t)idx[k] * n + b0);
      st(o + b0, a0);
    }
    for (; b0 < n; ++b0) {
      float a = 0;
      for (int64_t k = s; k < e; ++k) a += val[k] * xp[(int64_t)idx[k] * n + b0];
      o[b0] = a;
    }
  }
}

// over the transposed structure, with the values gathered into its order (`val[perm]`), it gives the input's gradient
torch::Tensor spmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor x, int64_t rows, int64_t B, torch::Tensor out) {
  if (!out.numel()) out = torch::empty({rows * B}, x.options());
  csr_mm(ptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(), val.data_ptr<float>(), x.data_ptr<float>(), out.data_ptr<float>(),
         rows, B ? x.numel() / B : 0, B);
  return out;
}

// grad of the values: g[k] = dot(gy[row_k, :], x[col_k, :]) over the batch, for each stored entry of a CSR matrix (gy, x in panels)
torch::Tensor sddmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor gy, torch::Tensor x, int64_t B) {
  const int64_t rows = ptr.size(0) - 1, cols = B ? x.numel() / B : 0, np = (B + PANEL - 1) / PANEL;
  auto g = torch::zeros({idx.size(0)}, x.options());
  const int64_t* __restrict p = ptr.data_ptr<int64_t>(); const int32_t* __restrict ci = idx.data_ptr<int32_t>();
  const float* __restrict gyp = gy.data_ptr<float>(); const float* __restrict xq = x.data_ptr<float>(); float* __restrict gp = g.data_ptr<float>();
  #pragma omp parallel if (p[rows] * B > PAR)
  for (int64_t pn = 0; pn < np; ++pn) {     // panel by panel, each row adding the panel's share to its entries
    const int64_t n = std::min(PANEL, B - pn * PANEL);
    const float* xp = xq + pn * PANEL * cols; const float* gq = gyp + pn * PANEL * rows;
    #pragma omp for schedule(dynamic, 32)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t b0 = 0;
      for (; b0 + 64 <= n; b0 += 64) {       // this row's gradient block stays in registers for all its entries
        const float* gr = gq + r * n + b0;
        const v16 g0 = ld(gr), g1 = ld(gr + 16), g2 = ld(gr + 32), g3 = ld(gr + 48);
        int64_t k = p[r];
        for (; k + 16 <= p[r + 1]; k += 16) {   // 16 entries at a time: their 16 dot products reduced together
          v16 acc[16];
          for (int u = 0; u < 16; ++u) {
            const float* xr = xp + (int64_t)ci[k + u] * n + b0;
            acc[u] = g0 * ld(xr) + g1 * ld(xr + 16) + g2 * ld(xr + 32) + g3 * ld(xr + 48);
          }
          st(gp + k, ld(gp + k) + reduce16(acc));
        }
        for (; k < p[r + 1]; ++k) {
          const float* xr = xp + (int64_t)ci[k] * n + b0;
          gp[k] += hsum(g0 * ld(xr) + g1 * ld(xr + 16) + g2 * ld(xr + 32) + g3 * ld(xr + 48));
        }
      }
      for (; b0 + 16 <= n; b0 += 16) {       // a narrow panel (a small batch, a recurrent step): 16 lanes at a time
        const v16 g0 = ld(gq + r * n + b0);
        int64_t k = p[r];
        for (; k + 16 <= p[r + 1]; k += 16) {
          v16 acc[16];
          for (int u = 0; u < 16; ++u) acc[u] = g0 * ld(xp + (int64_t)ci[k + u] * n + b0);
          st(gp + k, ld(gp + k) + reduce16(acc));
        }
        for (; k < p[r + 1]; ++k) gp[k] += hsum(g0 * ld(xp + (int64_t)ci[k] * n + b0));
      }
      for (; b0 < n; ++b0) {
        const float gv = gq[r * n + b0];
        for (int64_t k = p[r]; k < p[r + 1]; ++k) gp[k] += gv * xp[(int64_t)ci[k] * n + b0];
      }
    }
  }
  return g;
}

// a (B x C, row-major) in panels: for each run of PANEL rows, its (C x lanes) transpose; 16 x 16 blocks through registers
torch::Tensor to_panels(torch::Tensor a, torch::Tensor out) {
  const int64_t B = a.size(0), C = a.size(1), np = (B + PANEL - 1) / PANEL;
  if (!out.numel()) out = torch::empty({B * C}, a.options());
  const float* ap = a.data_ptr<float>(); float* o = out.data_ptr<float>();
  #pragma omp parallel for schedule(static) if (B * C >= PAR / 8)
  for (int64_t blk = 0; blk < np * (PANEL / 16); ++blk) {      // 16 rows of the input, in one panel
    const int64_t pn = blk / (PANEL / 16), j0 = (blk % (PANEL / 16)) * 16, n = std::min(PANEL, B - pn * PANEL);
    if (j0 >= n) continue;
    const float* src = ap + (pn * PANEL + j0) * C; float* dst = o + pn * PANEL * C + j0;
    int64_t c0 = 0;
    if (j0 + 16 <= n)
      for (; c0 + 16 <= C; c0 += 16) {
        v16 r[16];
        for (int u = 0; u < 16; ++u) r[u] = ld(src + u * C + c0);
        transpose16(r);
        for (int u = 0; u < 16; ++u) st(dst + (c0 + u) * n, r[u]);
      }
    for (int64_t j = 0; j < std::min<int64_t>(16, n - j0); ++j)
      for (int64_t c = c0; c < C; ++c) dst[c * n + j] = src[j * C + c];
  }
  return out;
}

// the (B x C) row-major matrix of `t` (C features in panels of B lanes), plus bias[c] on each column c when given
torch::Tensor from_panels(torch::Tensor t, int64_t B, int64_t C, torch::Tensor bias) {
  const int64_t np = (B + PANEL - 1) / PANEL;
  auto out = torch::empty({B, C}, t.options());
  const float* tp = t.data_ptr<float>(); float* o = out.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  #pragma omp parallel for schedule(static) if (B * C >= PAR / 8)
  for (int64_t blk = 0; blk < np * (PANEL / 16); ++blk) {      // 16 rows of the output, in one panel
    const int64_t pn = blk / (PANEL / 16), j0 = (blk % (PANEL / 16)) * 16, n = std::min(PANEL, B - pn * PANEL);
    if (j0 >= n) continue;
    const float* src = tp + pn * PANEL * C + j0; float* dst = o + (pn * PANEL + j0) * C;
    int64_t c0 = 0;
    if (j0 + 16 <= n)
      for (; c0 + 16 <= C; c0 += 16) {
        v16 r[16];
        for (int u = 0; u < 16; ++u) r[u] = ld(src + (c0 + u) * n);
        transpose16(r);
        const v16 bv = b ? ld(b + c0) : v16{0};
        for (int u = 0; u < 16; ++u) st(dst + u * C + c0, r[u] + bv);
      }
    for (int64_t j = 0; j < std::min<int64_t>(16, n - j0); ++j)
      for (int64_t c = c0; c < C; ++c) dst[j * C + c] = src[c * n + j] + (b ? b[c] : 0.f);
  }
  return out;
}
