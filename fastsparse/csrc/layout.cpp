// Compressed rows: the transposed structure (for the backward pass), the new layout after a topology update and the
// values moved into it, the candidates for growth above a threshold, and the dense matrix.
#include "fastsparse.h"
#ifdef __AVX512F__
#include <immintrin.h>
static const __m512i LANE = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#endif

// the transposed structure of compressed rows, by counting (no sort): column pointers, row of each entry, its index in `values`
std::vector<torch::Tensor> csr_transpose(torch::Tensor ptr, torch::Tensor idx, int64_t cols) {
  const int64_t rows = ptr.size(0) - 1, nnz = idx.size(0);
  auto tptr = torch::zeros({cols + 1}, ptr.options());
  auto tidx = torch::empty({nnz}, idx.options()); auto perm = torch::empty({nnz}, ptr.options());
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>();
  int64_t* tp = tptr.data_ptr<int64_t>(); int32_t* ti = tidx.data_ptr<int32_t>(); int64_t* pm = perm.data_ptr<int64_t>();
  for (int64_t k = 0; k < nnz; ++k) ++tp[ci[k] + 1];
  for (int64_t c = 0; c < cols; ++c) tp[c + 1] += tp[c];
  std::vector<int64_t> next(tp, tp + cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = p[r]; k < p[r + 1]; ++k) { const int64_t at = next[ci[k]]++; ti[at] = (int32_t)r; pm[at] = k; }
  return {tptr, tidx, perm};
}

// the compressed rows after a topology update: the old entries (optr, oidx) still `kept` (a bool per old entry), merged in
// column order with `grown` (flat indices of a matrix of `cols` columns, none of them old entries kept); and for each old
// entry its new position, or -1 if it was dropped. Reads no mask.
std::vector<torch::Tensor> relayout(torch::Tensor kept, torch::Tensor optr, torch::Tensor oidx, torch::Tensor grown, int64_t cols) {
  const int64_t rows = optr.size(0) - 1, G = grown.size(0);
  const bool* kp = kept.data_ptr<bool>(); const int64_t* op = optr.data_ptr<int64_t>(); const int32_t* oi = oidx.data_ptr<int32_t>();
  const int64_t* g = grown.data_ptr<int64_t>();
  std::vector<int64_t> gp(rows + 1, 0);
  for (int64_t i = 0; i < G; ++i) ++gp[g[i] / cols + 1];
  for (int64_t r = 0; r < rows; ++r) gp[r + 1] += gp[r];
  std::vector<int32_t> gc(G); std::vector<int64_t> nx(gp.begin(), gp.end() - 1);
  for (int64_t i = 0; i < G; ++i) gc[nx[g[i] / cols]++] = (int32_t)(g[i] % cols);
  auto ptr = torch::zeros({rows + 1}, optr.options()); int64_t* p = ptr.data_ptr<int64_t>();
  #pragma omp parallel for schedule(dynamic, 64) if (oidx.size(0) + G > PAR)
  for (int64_t r = 0; r < rows; ++r) {
    std::sort(gc.begin() + gp[r], gc.begin() + gp[r + 1]);
    int64_t n = 0;
    for (int64_t j = op[r]; j < op[r + 1]; ++j) n += kp[j];
    p[r + 1] = n + gp[r + 1] - gp[r];
  }
  for (int64_t r = 0; r < rows; ++r) p[r + 1] += p[r];
  auto idx = torch::empty({p[rows]}, oidx.options()); auto where = torch::full({oidx.size(0)}, -1, optr.options());
  int32_t* ci = idx.data_ptr<int32_t>(); int64_t* w = where.data_ptr<int64_t>();
  #pragma omp parallel for schedule(dynamic, 64) if (oidx.size(0) + G > PAR)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = p[r], j = op[r], q = gp[r];
    const int64_t je = op[r + 1], qe = gp[r + 1];
    while (j < je || q < qe) {
      if (j < je && !kp[j]) { ++j; continue; }                              // dropped
      if (q >= qe || (j < je && oi[j] < gc[q])) { w[j] = k; ci[k++] = oi[j++]; }
      else ci[k++] = gc[q++];
    }
  }
  return {ptr, idx, where};
}

// the flat indices where `scores` >= tau and `mask` is false, ascending: one pass, no bool tensor
torch::Tensor above(torch::Tensor scores, torch::Tensor mask, double tau) {
  const int64_t n = scores.numel(); const float* s = scores.data_ptr<float>(); const bool* m = mask.data_ptr<bool>();
  const float t = (float)tau;
  const int nt = n > 4 * PAR ? omp_get_max_threads() : 1; const int64_t chunk = (n + nt - 1) / nt;
  std::vector<std::vector<int64_t>> parts(nt);
  #pragma omp parallel num_threads(nt)
  {
    const int id = omp_get_thread_num(); const int64_t b = id * chunk, e = std::min(n, b + chunk);
    auto& out = parts[id];
    int64_t i = b;
    for (; i + 16 <= e; i += 16) {        // most blocks hold no candidate: one vectorised test skips them
      int any = 0;
      for (int u = 0; u < 16; ++u) any |= (s[i + u] >= t) & !m[i + u];
      if (any) for (int u = 0; u < 16; ++u) if (s[i + u] >= t && !m[i + u]) out.push_back(i + u);
    }
    for (; i < e; ++i) if (s[i] >= t && !m[i]) out.push_back(i);
  }
  int64_t total = 0; for (auto& v : parts) total += v.size();
  auto res = torch::empty({total}, scores.options().dtype(torch::kInt64)); int64_t* r = res.data_ptr<int64_t>();
  for (auto& v : parts) { std::copy(v.begin(), v.end(), r); r += v.size(); }
  return res;
}

// The first k of n scores in the order `before` (a strict weak order on positions): a sample of the values `val` brackets
// the k-th; one pass keeps the positions below the bracket and those in it, and only the bracket is ranked. Where the sample
// misleads (or the scores are few), all of them are ranked: exact either way. In no particular order.
template <class V, class Before>
static std::vector<int64_t> first_k(int64_t n, int64_t k, V val, Before before) {
  std::vector<int64_t> below, band;
  bool bracketed = false;
  if (k && k < n && n >= (1 << 16)) {
    constexpr int64_t M = 1 << 13;
    std::vector<float> smp(M);
    for (int64_t j = 0; j < M; ++j) smp[j] = val(j * n / M);   // evenly spread over the scores
    std::sort(smp.begin(), smp.end());
    const double q = (double)k / n, d = 4 * std::sqrt(q * (1 - q) / M) + 2.0 / M;
    const int64_t lo_r = (int64_t)std::floor((q - d) * M), hi_r = (int64_t)std::ceil((q + d) * M);
    const float lo = lo_r < 0 ? -INFINITY : smp[lo_r], hi = hi_r >= M ? INFINITY : smp[hi_r];
    // one pass without branches: each position is written to both lists, and kept where it belongs (up to each list's room)
    const int64_t room_b = k, room_d = std::min(n, 4 * (int64_t)std::ceil(2 * d * n) + 1024);
    below.resize(room_b + 1); band.resize(room_d + 1);
    int64_t* bl = below.data(); int64_t* bd = band.data();
    int64_t nb = 0, nd = 0, tb = 0, td = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float x = val(i); const bool b = x < lo, m = !b && x <= hi;
      bl[nb] = i; nb += b & (nb < room_b); tb += b;
      bd[nd] = i; nd += m & (nd < room_d); td += m;
    }
    below.resize(nb); band.resize(nd);
    bracketed = tb == nb && td == nd && nb <= k && k <= nb + nd;
  }
  if (!bracketed) { below.clear(); band.resize(n); for (int64_t i = 0; i < n; ++i) band[i] = i; }
  const int64_t need = k - (int64_t)below.size();
  std::nth_element(band.begin(), band.begin() + need, band.end(), before);
  below.insert(below.end(), band.begin(), band.begin() + need);
  return below;
}

// The positions of the k smallest `scores` (largest: the k largest), ties going to the lower key (`keys`, int64, one per
// score; empty: the position itself), in no particular order: so the same set whatever order the scores come in. NaN ranks
// last. More than half of them: the others are found (the last n - k in the same order), and the rest listed ascending.
torch::Tensor top_k(torch::Tensor scores, torch::Tensor keys, int64_t k, bool largest) {
  const int64_t n = scores.numel();
  k = std::max<int64_t>(0, std::min(k, n));
  const float* s = scores.data_ptr<float>(); const int64_t* key = keys.numel() ? keys.data_ptr<int64_t>() : nullptr;
  auto out = torch::empty({k}, scores.options().dtype(torch::kInt64)); int64_t* o = out.data_ptr<int64_t>();
  auto val = [&](int64_t i) { const float x = largest ? -s[i] : s[i]; return std::isnan(x) ? INFINITY : x; };
  auto kv = [&](int64_t i) { return key ? key[i] : i; };
  if (2 * k <= n) {
    auto first = first_k(n, k, val, [&](int64_t a, int64_t b) { const float va = val(a), vb = val(b); return va < vb || (va == vb && kv(a) < kv(b)); });
    std::copy(first.begin(), first.end(), o);
  } else {                            // the last n - k: first in the reversed order
    auto last = first_k(n, n - k, [&](int64_t i) { return -val(i); },
                        [&](int64_t a, int64_t b) { const float va = val(a), vb = val(b); return va > vb || (va == vb && kv(a) > kv(b)); });
    std::vector<uint8_t> out_of(n, 0);
    for (int64_t i : last) out_of[i] = 1;
    int64_t j = 0;
    for (int64_t i = 0; i < n; ++i) if (!out_of[i]) o[j++] = i;
  }
  return out;
}

// RigL's growth candidates without the dense gradient: for a weight in compressed rows (ptr, idx) whose backward passes saw
// inputs xs[i] (B_i x C) and output gradients gys[i] (B_i x R), the positions where |sum_i gys[i]^T xs[i]| >= tau, among the
// inactive ones and the active ones not `kept` (dropped by this update): ascending flat indices, their scores, and a flag
// (1 if every entry of the gradient is finite, else 0). The gradient is made a block of rows at a time (torch's matrix
// product, into a 4 MB buffer: large enough for the product to run near its full rate, small enough for the cache) and read
// there: no dense gradient, no dense score, no dense mask. A row's kept weights are a bit per column, so that each candidate
// is written and counted without a branch (the candidates come from the gradient, in no order a branch could learn).
std::vector<torch::Tensor> grad_above(torch::Tensor ptr, torch::Tensor idx, torch::Tensor kept, std::vector<torch::Tensor> gys,
                                      std::vector<torch::Tensor> xs, double tau) {
  const int64_t R = ptr.size(0) - 1, C = xs[0].size(1);
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(R, (1 << 20) / std::max<int64_t>(C, 1)));   // 4 MB of gradient
  auto G = torch::empty({RB, C}, xs[0].options());
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>(); const bool* kp = kept.data_ptr<bool>();
  const float t = (float)tau;
  std::vector<int64_t> flat; std::vector<float> score;
  std::vector<int32_t> cols(C + 16);   // a row's columns at or above t
  std::vector<uint64_t> held((C + 63) / 64, 0);   // a bit per column of a row: a kept active weight, no candidate
  bool finite = true;
  for (int64_t r0 = 0; r0 < R; r0 += RB) {
    const int64_t nb = std::min(RB, R - r0);
    auto g = G.narrow(0, 0, nb);
    for (size_t i = 0; i < gys.size(); ++i) {   // in the order of the passes, as autograd sums a dense weight's gradient
      if (i == 0) at::mm_out(g, gys[i].narrow(1, r0, nb).t(), xs[i]);
      else g.addmm_(gys[i].narrow(1, r0, nb).t(), xs[i]);
    }
    const float* gp = g.data_ptr<float>();
    for (int64_t r = r0; r < r0 + nb; ++r) {
      const float* row = gp + (r - r0) * C;
      int64_t nc = 0, c = 0;            // one pass: the columns whose |g| reaches t, and the sum of |g| (is all of it finite?)
      v16 sums = {0};
      for (; c + 16 <= C; c += 16) {
        const v16 a = vabs(ld(row + c)); sums += a;
#ifdef __AVX512F__
        const __mmask16 m = _mm512_cmp_ps_mask((__m512)a, _mm512_set1_ps(t), _CMP_GE_OQ);
        _mm512_storeu_si512(cols.data() + nc, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(_mm512_set1_epi32((int)c), LANE)));
        nc += __builtin_popcount(m);    // no branch: a block holds candidates or not as the gradient falls
#else
        for (int u = 0; u < 16; ++u) if (a[u] >= t) cols[nc++] = (int32_t)(c + u);
#endif
      }
      float sum = hsum(sums);
      for (; c < C; ++c) { const float a = std::fabs(row[c]); sum += a; if (a >= t) cols[nc++] = (int32_t)c; }
      if (!std::isfinite(sum)) for (c = 0; c < C; ++c) finite &= std::isfinite(row[c]);   // or only too large to sum
      for (int64_t k = p[r]; k < p[r + 1]; ++k) if (kp[k]) held[ci[k] >> 6] |= 1ull << (ci[k] & 63);   // the row's kept active weights
      int64_t n = flat.size();
      flat.resize(n + nc); score.resize(n + nc);
      int64_t* fo = flat.data(); float* so = score.data();
      for (int64_t j = 0; j < nc; ++j) {  // every candidate written, kept only where not held: no branch
        const int32_t col = cols[j];
        fo[n] = r * C + col; so[n] = std::fabs(row[col]);
        n += !((held[col >> 6] >> (col & 63)) & 1);
      }
      flat.resize(n); score.resize(n);
      for (int64_t k = p[r]; k < p[r + 1]; ++k) held[ci[k] >> 6] = 0;
    }
  }
  const int64_t n = flat.size();
  auto out_flat = torch::empty({n}, ptr.options()); auto out_score = torch::empty({n}, xs[0].options());
  std::copy(flat.begin(), flat.end(), out_flat.data_ptr<int64_t>()); std::copy(score.begin(), score.end(), out_score.data_ptr<float>());
  return {out_flat, out_score, torch::full({}, finite ? 1 : 0, ptr.options())};
}

// `val[perm]`, the values of compressed rows in the order of their transposed structure: a gather that asks for each value
// some entries ahead, since they come in random order from memory
torch::Tensor transpose_values(torch::Tensor perm, torch::Tensor val) {
  const int64_t n = perm.size(0);
  auto out = torch::empty_like(val);
  const int64_t* pm = perm.data_ptr<int64_t>(); const float* v = val.data_ptr<float>(); float* o = out.data_ptr<float>();
  constexpr int64_t D = 32;
  int64_t k = 0;
  for (; k + D < n; ++k) { __builtin_prefetch(v + pm[k + D]); o[k] = v[pm[k]]; }
  for (; k < n; ++k) o[k] = v[pm[k]];
  return out;
}

// a tensor of n entries holding v[j] at where[j] for each j with where[j] >= 0, zeros elsewhere (values moved to a new
// layout); in `out` when given (a kept buffer: no fresh pages)
torch::Tensor move(torch::Tensor v, torch::Tensor where, int64_t n, torch::Tensor out) {
  if (out.numel()) out.zero_(); else out = torch::zeros({n}, v.options());
  const float* vp = v.data_ptr<float>(); const int64_t* w = where.data_ptr<int64_t>(); float* o = out.data_ptr<float>();
  const int64_t m = where.size(0);
  #pragma omp parallel for schedule(static) if (m > PAR)
  for (int64_t j = 0; j < m; ++j) if (w[j] >= 0) o[w[j]] = vp[j];
  return out;
}

// the dense (rows x cols) matrix holding `val` at the positions of compressed rows (ptr, idx)
torch::Tensor densify(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, int64_t cols) {
  const int64_t rows = ptr.size(0) - 1;
  auto out = torch::zeros({rows, cols}, val.options());
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>();
  const float* v = val.data_ptr<float>(); float* o = out.data_ptr<float>();
  #pragma omp parallel for schedule(static) if (p[rows] > PAR)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = p[r]; k < p[r + 1]; ++k) o[r * cols + ci[k]] = v[k];
  return out;
}

// the flat (row-major) index of each entry of compressed rows (ptr, idx) with `cols` columns, in their order
torch::Tensor flat(torch::Tensor ptr, torch::Tensor idx, int64_t cols) {
  const int64_t rows = ptr.size(0) - 1;
  auto out = torch::empty({idx.size(0)}, ptr.options());
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>(); int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = p[r]; k < p[r + 1]; ++k) o[k] = r * cols + ci[k];
  return out;
}

// the dense weight gradient sum_i gys[i]^T xs[i] (gys[i]: B_i x R, xs[i]: B_i x cols, row-major) at the flat indices `at`
// alone: a sample of positions, each a dot product over the batch, a batch row at a time (its inputs and output gradients in cache)
torch::Tensor grad_at(std::vector<torch::Tensor> gys, std::vector<torch::Tensor> xs, torch::Tensor at, int64_t cols) {
  const int64_t n = at.numel();
  auto out = torch::zeros({n}, xs[0].options());
  const int64_t* a = at.data_ptr<int64_t>(); float* o = out.data_ptr<float>();
  std::vector<int32_t> rr(n), cc(n);
  for (int64_t j = 0; j < n; ++j) { rr[j] = (int32_t)(a[j] / cols); cc[j] = (int32_t)(a[j] % cols); }
  for (size_t i = 0; i < gys.size(); ++i) {
    const int64_t B = xs[i].size(0), R = gys[i].size(1);
    const float* g = gys[i].data_ptr<float>(); const float* x = xs[i].data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < n; ++j) o[j] += g[b * R + rr[j]] * x[b * cols + cc[j]];
  }
  return out;
}
