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
#ifdef __AVX512F__
#include <immintrin.h>   // vector gathers: the lanes of a panel narrower than a vector
#endif

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

// Lanes b0 .. n of a panel, fewer than 16 (a batch under 16, a panel's last lanes): one vector of lanes, its loads and
// stores masked; a single lane (a batch of one) takes a vector of 16 of the row's entries instead, their inputs gathered.
#ifdef __AVX512F__
static inline __mmask16 first(int64_t m) { return m >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << m) - 1); }
static inline v16 ld(const float* p, __mmask16 m) { return (v16)_mm512_maskz_loadu_ps(m, p); }
// the positions in a panel of n lanes of the input rows of entries k .. k + 16 (those in mask km)
static inline __m512i rows_of(const int32_t* idx, int64_t k, __mmask16 km, int64_t n) {
  return _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(km, idx + k), _mm512_set1_epi32((int)n));
}
#endif

// lanes b0 .. n (fewer than 16) of o: the row's entries s .. e of A (idx, val) times a panel xp of n lanes
static inline void mm_lanes(const int32_t* __restrict idx, const float* __restrict val, const float* __restrict xp, float* __restrict o,
                            int64_t s, int64_t e, int64_t b0, int64_t n) {
#ifdef __AVX512F__
  if (n - b0 == 1) {
    v16 acc = {0};
    for (int64_t k = s; k < e; k += 16) {
      const __mmask16 km = first(e - k);
      acc += ld(val + k, km) * (v16)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, rows_of(idx, k, km, n), xp + b0, 4);
    }
    o[b0] = hsum(acc);
    return;
  }
  const __mmask16 lm = first(n - b0);
  const float* xb = xp + b0;
  v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};   // four entries at a time, each into its own sum: no wait on the last add
  int64_t k = s;
  for (; k + 4 <= e; k += 4) {
    a0 += val[k] * ld(xb + (int64_t)idx[k] * n, lm); a1 += val[k + 1] * ld(xb + (int64_t)idx[k + 1] * n, lm);
    a2 += val[k + 2] * ld(xb + (int64_t)idx[k + 2] * n, lm); a3 += val[k + 3] * ld(xb + (int64_t)idx[k + 3] * n, lm);
  }
  for (; k < e; ++k) a0 += val[k] * ld(xb + (int64_t)idx[k] * n, lm);
  _mm512_mask_storeu_ps(o + b0, lm, (__m512)((a0 + a1) + (a2 + a3)));
#else
  for (int64_t j = b0; j < n; ++j) {
    float a = 0;
    for (int64_t k = s; k < e; ++k) a += val[k] * xp[(int64_t)idx[k] * n + j];
    o[j] = a;
  }
#endif
}

// how many entries ahead the product asks for the input row an entry will read: a panel lives in L2, the rows come in any order
constexpr int64_t AHEAD = 8;
// row r of A (compressed rows: ptr, idx, val) times a panel xp of n lanes: the n lanes of o
static inline void mm_row(const int64_t* __restrict ptr, const int32_t* __restrict idx, const float* __restrict val,
                          const float* __restrict xp, float* __restrict o, int64_t r, int64_t n) {
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
  if (n - b0 >= 16) {                  // 16, 32 or 48 lanes left: one pass over the entries
    axpy_rest((n - b0) / 16, [val](int64_t k) { return val[k]; }, [idx, n](int64_t k) { return (int64_t)idx[k] * n; }, xp + b0, s, e, o + b0, false);
    b0 += (n - b0) / 16 * 16;
  }
  if (b0 < n) mm_lanes(idx, val, xp, o, s, e, b0, n);
}

// out = A (rows x cols, compressed rows: ptr, idx, val) @ x, both in panels of B lanes
static void csr_mm(const int64_t* __restrict ptr, const int32_t* __restrict idx, const float* __restrict val,
                   const float* __restrict x, float* __restrict out, int64_t rows, int64_t cols, int64_t B) {
  const int64_t np = (B + PANEL - 1) / PANEL;
  #pragma omp parallel for schedule(dynamic, 32) if (ptr[rows] * B > PAR)
  for (int64_t it = 0; it < np * rows; ++it) {    // panel by panel: the panel's input stays in cache for all rows
    const int64_t pn = it / rows, r = it % rows, n = std::min(PANEL, B - pn * PANEL);
    mm_row(ptr, idx, val, x + pn * PANEL * cols, out + pn * PANEL * rows + r * n, r, n);
  }
}

// over the transposed structure, with the values gathered into its order (`val[perm]`), it gives the input's gradient
torch::Tensor spmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor x, int64_t rows, int64_t B, torch::Tensor out) {
  if (!out.numel()) out = torch::empty({rows * B}, x.options());
  csr_mm(ptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(), val.data_ptr<float>(), x.data_ptr<float>(), out.data_ptr<float>(),
         rows, B ? x.numel() / B : 0, B);
  return out;
}

// row r's entries' dots over NV vectors of lanes: gr (row r of the output gradient's panel) and xp at the run's first lane
template <int NV>
static inline void sddmm_lanes(const int64_t* __restrict p, const int32_t* __restrict ci, const float* __restrict gr,
                               const float* __restrict xp, float* __restrict gp, int64_t r, int64_t n) {
  v16 g[NV];                             // this row's gradient block stays in registers for all its entries
  for (int v = 0; v < NV; ++v) g[v] = ld(gr + 16 * v);
  const auto dot = [&](const float* xr) { v16 a = g[0] * ld(xr); for (int v = 1; v < NV; ++v) a += g[v] * ld(xr + 16 * v); return a; };
  int64_t k = p[r];
  for (; k + 16 <= p[r + 1]; k += 16) {  // 16 entries at a time: their 16 dot products reduced together
    v16 acc[16];
    for (int u = 0; u < 16; ++u) acc[u] = dot(xp + (int64_t)ci[k + u] * n);
    st(gp + k, ld(gp + k) + reduce16(acc));
  }
  for (; k < p[r + 1]; ++k) gp[k] += hsum(dot(xp + (int64_t)ci[k] * n));
}

// row r's share of the values' gradient from one panel (gq: the output gradient's panel, xp: the input's, n lanes each):
// g[k] += dot(gq[r], xp[idx[k]]) for each of the row's entries
static inline void sddmm_row(const int64_t* __restrict p, const int32_t* __restrict ci, const float* __restrict gq,
                             const float* __restrict xp, float* __restrict gp, int64_t r, int64_t n) {
  int64_t b0 = 0;
  for (; b0 + 64 <= n; b0 += 64) sddmm_lanes<4>(p, ci, gq + r * n + b0, xp + b0, gp, r, n);
  switch ((n - b0) / 16) {               // 16, 32 or 48 lanes left (a small batch, a recurrent step): one pass over the entries
    case 1: sddmm_lanes<1>(p, ci, gq + r * n + b0, xp + b0, gp, r, n); break;
    case 2: sddmm_lanes<2>(p, ci, gq + r * n + b0, xp + b0, gp, r, n); break;
    case 3: sddmm_lanes<3>(p, ci, gq + r * n + b0, xp + b0, gp, r, n); break;
  }
  b0 += (n - b0) / 16 * 16;
  if (b0 == n) return;
#ifdef __AVX512F__
  if (n - b0 == 1) {                     // one lane: 16 entries at a time, their inputs gathered
    const float gv = gq[r * n + b0];
    for (int64_t k = p[r]; k < p[r + 1]; k += 16) {
      const __mmask16 km = first(p[r + 1] - k);
      const v16 x16 = (v16)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, rows_of(ci, k, km, n), xp + b0, 4);
      _mm512_mask_storeu_ps(gp + k, km, (__m512)(ld(gp + k, km) + gv * x16));
    }
    return;
  }
  const __mmask16 lm = first(n - b0);   // the last lanes, fewer than 16: masked loads
  const v16 g0 = ld(gq + r * n + b0, lm);
  int64_t k = p[r];
  for (; k + 16 <= p[r + 1]; k += 16) {
    v16 acc[16];
    for (int u = 0; u < 16; ++u) acc[u] = g0 * ld(xp + (int64_t)ci[k + u] * n + b0, lm);
    st(gp + k, ld(gp + k) + reduce16(acc));
  }
  for (; k < p[r + 1]; ++k) gp[k] += hsum(g0 * ld(xp + (int64_t)ci[k] * n + b0, lm));
#else
  for (; b0 < n; ++b0) {
    const float gv = gq[r * n + b0];
    for (int64_t k = p[r]; k < p[r + 1]; ++k) gp[k] += gv * xp[(int64_t)ci[k] * n + b0];
  }
#endif
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
    #pragma omp for schedule(dynamic, 32)
    for (int64_t r = 0; r < rows; ++r) sddmm_row(p, ci, gyp + pn * PANEL * rows, xq + pn * PANEL * cols, gp, r, n);
  }
  return g;
}

// rows j0 .. j0 + m (m <= 16) of a panel of n lanes: src (m x C, row stride C) -> dst, column c at dst[c * n], 16 x 16 blocks through registers
static inline void pack16(const float* __restrict src, int64_t C, int64_t m, float* __restrict dst, int64_t n) {
  int64_t c0 = 0;
  if (m == 16)
    for (; c0 + 16 <= C; c0 += 16) {
      v16 r[16];
      for (int u = 0; u < 16; ++u) r[u] = ld(src + u * C + c0);
      transpose16(r);
      for (int u = 0; u < 16; ++u) st(dst + (c0 + u) * n, r[u]);
    }
  for (int64_t j = 0; j < m; ++j)
    for (int64_t c = c0; c < C; ++c) dst[c * n + j] = src[j * C + c];
}

// the reverse of `pack16`: lanes j0 .. j0 + m of a panel of n lanes (src, column c at src[c * n]) -> dst (m x C, row stride
// ldd: C for a whole row, more for C columns of a wider one), plus bias[c]
static inline void unpack16(const float* __restrict src, int64_t n, int64_t C, int64_t m, float* __restrict dst, const float* __restrict b,
                            int64_t ldd) {
  int64_t c0 = 0;
  if (m == 16)
    for (; c0 + 16 <= C; c0 += 16) {
      v16 r[16];
      for (int u = 0; u < 16; ++u) r[u] = ld(src + (c0 + u) * n);
      transpose16(r);
      const v16 bv = b ? ld(b + c0) : v16{0};
      for (int u = 0; u < 16; ++u) st(dst + u * ldd + c0, r[u] + bv);
    }
  for (int64_t j = 0; j < m; ++j)
    for (int64_t c = c0; c < C; ++c) dst[j * ldd + c] = src[c * n + j] + (b ? b[c] : 0.f);
}

// a panel: n (<= PANEL) rows of a (row stride C) -> their (C x n) transpose, and back
static inline void pack(const float* src, int64_t C, int64_t n, float* dst) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) pack16(src + j0 * C, C, std::min<int64_t>(16, n - j0), dst + j0, n);
}
static inline void unpack(const float* src, int64_t n, int64_t C, float* dst, const float* b, int64_t ldd) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) unpack16(src + j0, n, C, std::min<int64_t>(16, n - j0), dst + j0 * ldd, b, ldd);
}

// a (B x C, row-major) in panels: for each run of PANEL rows, its (C x lanes) transpose
torch::Tensor to_panels(torch::Tensor a, torch::Tensor out) {
  const int64_t B = a.size(0), C = a.size(1), np = (B + PANEL - 1) / PANEL;
  if (!out.numel()) out = torch::empty({B * C}, a.options());
  const float* ap = a.data_ptr<float>(); float* o = out.data_ptr<float>();
  #pragma omp parallel for schedule(static) if (B * C >= PAR / 8)
  for (int64_t blk = 0; blk < np * (PANEL / 16); ++blk) {      // 16 rows of the input, in one panel
    const int64_t pn = blk / (PANEL / 16), j0 = (blk % (PANEL / 16)) * 16, n = std::min(PANEL, B - pn * PANEL);
    if (j0 < n) pack16(ap + (pn * PANEL + j0) * C, C, std::min<int64_t>(16, n - j0), o + pn * PANEL * C + j0, n);
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
    if (j0 < n) unpack16(tp + pn * PANEL * C + j0, n, C, std::min<int64_t>(16, n - j0), o + (pn * PANEL + j0) * C, b, C);
  }
  return out;
}

// ---------------------------------------------------------------- the layer's product and gradients, fused
// `linear_fwd` and `linear_bwd` take and give row-major activations. Each makes one panel at a time into a buffer of its
// thread, where it stays in L2 while the product reads it, and writes the result's rows out: the activations cross memory
// once, where `to_panels`, `spmm` and `from_panels` write and read whole batches again in panels, from DRAM when the
// batch is large. With more panels than threads (or one thread), each thread takes whole panels (its own share of the
// values' and bias gradients, added at the end). With fewer, every thread makes each panel itself, in its own core's
// cache, and computes its share of the weight's rows: no buffer is shared, no two threads write the same place, and the
// threads meet once per call.

// the bytes of L2 a panel's input and result may take together: beyond, the result goes out 16 features at a time from a block in L1
constexpr int64_t PANEL_CACHE = 1 << 20;

// a thread's kept buffer `i` of at least n floats, 64-byte aligned; it grows, never shrinks (no page faults after the first steps)
static float* buffer(int i, int64_t n) {
  static thread_local std::vector<float> bufs[3];
  auto& b = bufs[i];
  if ((int64_t)b.size() < n + 16) b.resize(n + 16);
  return (float*)(((uintptr_t)b.data() + 63) & ~(uintptr_t)63);
}

// how many threads a product of `work` multiply-adds uses, and whether its np panels go whole to the threads
static int threads_for(int64_t work) { return work > PAR ? omp_get_max_threads() : 1; }
static bool by_panel(int64_t np, int T) { return np >= T && (T == 1 || np % T == 0 || np >= 4 * T); }

// outputs r0 .. r1 of the product of A (R rows: ptr, idx, val) with one panel xb of n lanes, as columns r0 .. r1 of the n rows
// of out (row stride R), plus bias b: made in tmp, then transposed out; all at once when they fit in L2 beside xb (cols: xb's
// features), else 16 at a time from a block that stays in L1
static void product_panel(const int64_t* p, const int32_t* ci, const float* v, const float* xb, int64_t n, int64_t cols, int64_t R,
                          int64_t r0, int64_t r1, float* tmp, float* out, const float* b) {
  const int64_t step = (cols + r1 - r0) * PANEL * 4 <= PANEL_CACHE ? std::max<int64_t>(r1 - r0, 1) : 16;
  for (int64_t a = r0; a < r1; a += step) {
    const int64_t e = std::min(r1, a + step);
    for (int64_t r = a; r < e; ++r) mm_row(p, ci, v, xb, tmp + (r - a) * n, r, n);
    unpack(tmp, n, e - a, out + a, b ? b + a : nullptr, R);
  }
}

// thread t's share of R rows split in runs of 16 over T threads
static inline std::pair<int64_t, int64_t> share(int64_t R, int t, int T) {
  const int64_t nb = (R + 15) / 16;
  return {std::min(R, nb * t / T * 16), std::min(R, nb * (t + 1) / T * 16)};
}

// y = x W^T + bias: x (B x C) and y (B x R) row-major, W (R x C) in compressed rows (ptr, idx, val)
torch::Tensor linear_fwd(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor x, torch::Tensor bias) {
  const int64_t B = x.size(0), C = x.size(1), R = ptr.size(0) - 1, np = (B + PANEL - 1) / PANEL;
  auto y = torch::empty({B, R}, x.options());
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>(); const float* v = val.data_ptr<float>();
  const float* xq = x.data_ptr<float>(); float* yq = y.data_ptr<float>(); const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int T = threads_for(p[R] * B);
  const bool panels_each = by_panel(np, T);
  #pragma omp parallel num_threads(T) if (T > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* xb = buffer(0, PANEL * C); float* tmp = buffer(1, PANEL * R);
    // whole panels, one in nt to each thread; or every panel, and the thread's share of its rows
    const auto [r0, r1] = panels_each ? std::pair<int64_t, int64_t>{0, R} : share(R, t, nt);
    for (int64_t pn = panels_each ? t : 0; pn < np; pn += panels_each ? nt : 1) {
      const int64_t n = std::min(PANEL, B - pn * PANEL);
      pack(xq + pn * PANEL * C, C, n, xb);
      product_panel(p, ci, v, xb, n, C, R, r0, r1, tmp, yq + pn * PANEL * R, b);
    }
  }
  return y;
}

// out (a panel of n lanes over the C inputs) += rows r0 .. r1 of W^T gq: each active weight adds its row's n lanes of the output
// gradient's panel gq, times its value, to its column's: the input's gradient from W's own rows, for a batch too small to pay
// for gathering the values in the transposed order
static void scatter_rows(const int64_t* __restrict p, const int32_t* __restrict ci, const float* __restrict v, const float* __restrict gq,
                         int64_t n, int64_t r0, int64_t r1, float* __restrict out) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = gq + r * n;
#ifdef __AVX512F__
    if (n == 1) {                       // 16 of the row's entries at a time: their columns gathered, added to, scattered back
      const v16 gv = v16{} + g[0];
      for (int64_t k = p[r]; k < p[r + 1]; k += 16) {
        const __mmask16 km = first(p[r + 1] - k);
        const __m512i vi = rows_of(ci, k, km, 1);
        const v16 cur = (v16)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, vi, out, 4);
        _mm512_mask_i32scatter_ps(out, km, vi, (__m512)(cur + ld(v + k, km) * gv), 4);   // a row's columns are distinct
      }
      continue;
    }
    for (int64_t b0 = 0; b0 < n; b0 += 16) {
      const __mmask16 lm = first(n - b0);
      const v16 gv = ld(g + b0, lm);
      for (int64_t k = p[r]; k < p[r + 1]; ++k) {
        float* o = out + (int64_t)ci[k] * n + b0;
        _mm512_mask_storeu_ps(o, lm, (__m512)(ld(o, lm) + v[k] * gv));
      }
    }
#else
    for (int64_t k = p[r]; k < p[r + 1]; ++k)
      for (int64_t j = 0; j < n; ++j) out[(int64_t)ci[k] * n + j] += v[k] * g[j];
#endif
  }
}

// gbias[r] += the sum of row r of a panel (R x n), r0 <= r < r1: the bias gradient's share of the panel's batch rows
static inline void panel_sums(const float* gyb, int64_t n, int64_t r0, int64_t r1, float* gbias) {
  for (int64_t r = r0; r < r1; ++r) { float s = 0; for (int64_t j = 0; j < n; ++j) s += gyb[r * n + j]; gbias[r] += s; }
}

// the gradients of `linear_fwd`: {gx (B x C), gv (nnz), gbias (R)}, each an empty tensor where not asked for.
// vt: the values in the order of the transposed structure (tptr, tidx), needed for gx only. For each panel: the output
// gradient's panel (and its sums for the bias); the input gradient's rows from it (W^T over the transposed structure);
// then the input's panel, and the values' gradient as the output gradient's rows stream past. With few panels, each
// thread makes both panels itself and takes its share of the rows of W (values' gradient, bias) and of W^T (input's gradient)
std::vector<torch::Tensor> linear_bwd(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor tptr, torch::Tensor tidx,
                                      torch::Tensor vt, torch::Tensor x, torch::Tensor gy, bool want_gx, bool want_gv, bool want_gb) {
  const int64_t B = x.size(0), C = x.size(1), R = ptr.size(0) - 1, np = (B + PANEL - 1) / PANEL, nnz = idx.size(0);
  auto none = torch::empty({0}, x.options());
  auto gx = want_gx ? torch::empty({B, C}, x.options()) : none;
  auto gv = want_gv ? torch::zeros({nnz}, x.options()) : none;
  auto gb = want_gb ? torch::zeros({R}, x.options()) : none;
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>();
  const int64_t* tp = want_gx ? tptr.data_ptr<int64_t>() : nullptr; const int32_t* tc = want_gx ? tidx.data_ptr<int32_t>() : nullptr;
  // without the transposed values (vt empty, of a weight with some), the input's gradient comes from W's rows, scattered (`scatter_rows`): one panel,
  // each thread its share of the rows into a panel of its own, summed at the end
  const bool scatter = want_gx && vt.numel() != nnz;
  TORCH_CHECK(!scatter || np <= 1, "linear_bwd: the input's gradient without the transposed values takes a batch of at most ", PANEL, " rows");
  const float* vtp = want_gx && !scatter ? vt.data_ptr<float>() : nullptr; const float* vp = scatter ? val.data_ptr<float>() : nullptr;
  const float* xq = x.data_ptr<float>(); const float* gyq = gy.data_ptr<float>();
  float* gxq = want_gx ? gx.data_ptr<float>() : nullptr; float* gvq = want_gv ? gv.data_ptr<float>() : nullptr;
  float* gbq = want_gb ? gb.data_ptr<float>() : nullptr;
  const int T = threads_for(nnz * B);
  const bool panels_each = by_panel(np, T);
  // with whole panels per thread, thread 0 adds to the results themselves, the others to their own shares, summed at the end
  std::vector<float> gv_part(panels_each && gvq ? (T - 1) * nnz : 0, 0.f), gb_part(panels_each && gbq ? (T - 1) * R : 0, 0.f);
  std::vector<float> gx_part(scatter ? T * C * B : 0, 0.f);
  #pragma omp parallel num_threads(T) if (T > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    float* gyb = buffer(0, PANEL * R); float* tmp = buffer(1, PANEL * C); float* xb = buffer(2, PANEL * C);
    float* mv = gvq ? (panels_each && t ? gv_part.data() + (t - 1) * nnz : gvq) : nullptr;
    float* mb = gbq ? (panels_each && t ? gb_part.data() + (t - 1) * R : gbq) : nullptr;
    // whole panels, one in nt to each thread; or every panel, and the thread's share of the rows of W and of W^T
    const auto [r0, r1] = panels_each ? std::pair<int64_t, int64_t>{0, R} : share(R, t, nt);
    const auto [c0, c1] = panels_each ? std::pair<int64_t, int64_t>{0, C} : share(C, t, nt);
    for (int64_t pn = panels_each ? t : 0; pn < np; pn += panels_each ? nt : 1) {
      const int64_t n = std::min(PANEL, B - pn * PANEL);
      pack(gyq + pn * PANEL * R, R, n, gyb);
      if (mb) panel_sums(gyb, n, r0, r1, mb);
      if (scatter) scatter_rows(p, ci, vp, gyb, n, r0, r1, gx_part.data() + t * C * n);
      else if (gxq) product_panel(tp, tc, vtp, gyb, n, R, C, c0, c1, tmp, gxq + pn * PANEL * C, nullptr);
      if (mv) {
        pack(xq + pn * PANEL * C, C, n, xb);
        for (int64_t r = r0; r < r1; ++r) sddmm_row(p, ci, gyb, xb, mv, r, n);
      }
    }
  }
  if (scatter && B) {                   // the threads' panels summed, back to rows
    for (int t = 1; t < T; ++t) { const float* s = gx_part.data() + t * C * B; for (int64_t i = 0; i < C * B; ++i) gx_part[i] += s[i]; }
    unpack(gx_part.data(), B, C, gxq, nullptr, C);
  }
  for (int t = 1; panels_each && t < T; ++t) {
    if (gvq) { const float* s = gv_part.data() + (t - 1) * nnz; for (int64_t k = 0; k < nnz; ++k) gvq[k] += s[k]; }
    if (gbq) { const float* s = gb_part.data() + (t - 1) * R; for (int64_t r = 0; r < R; ++r) gbq[r] += s[r]; }
  }
  return {gx, gv, gb};
}
