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

// the compressed rows after a topology update: the old entries (optr, oidx) still set in `mask`, merged in column order
// with `grown` (flat indices, none of them old entries); and for each old entry its new position, or -1 if it was dropped.
// Reads the mask at the old entries only, never the whole of it.
std::vector<torch::Tensor> relayout(torch::Tensor mask, torch::Tensor optr, torch::Tensor oidx, torch::Tensor grown) {
  const int64_t rows = optr.size(0) - 1, cols = mask.size(1), G = grown.size(0);
  const bool* m = mask.data_ptr<bool>(); const int64_t* op = optr.data_ptr<int64_t>(); const int32_t* oi = oidx.data_ptr<int32_t>();
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
    int64_t kept = 0;
    for (int64_t j = op[r]; j < op[r + 1]; ++j) kept += m[r * cols + oi[j]];
    p[r + 1] = kept + gp[r + 1] - gp[r];
  }
  for (int64_t r = 0; r < rows; ++r) p[r + 1] += p[r];
  auto idx = torch::empty({p[rows]}, oidx.options()); auto where = torch::full({oidx.size(0)}, -1, optr.options());
  int32_t* ci = idx.data_ptr<int32_t>(); int64_t* w = where.data_ptr<int64_t>();
  #pragma omp parallel for schedule(dynamic, 64) if (oidx.size(0) + G > PAR)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = p[r], j = op[r], q = gp[r];
    const int64_t je = op[r + 1], qe = gp[r + 1];
    while (j < je || q < qe) {
      if (j < je && !m[r * cols + oi[j]]) { ++j; continue; }                // dropped
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

// RigL's growth candidates without the dense gradient: for a weight in compressed rows (ptr, idx) whose backward passes saw
// inputs xs[i] (B_i x C) and output gradients gys[i] (B_i x R), the positions where |sum_i gys[i]^T xs[i]| >= tau, among the
// inactive ones and the active ones not `kept` (dropped by this update): ascending flat indices, their scores, and a flag
// (1 if every entry of the gradient is finite, else 0). The gradient is made a block of rows at a time (torch's matrix
// product, into a buffer that stays in L2) and read there: no dense gradient, no dense score, no dense mask.
std::vector<torch::Tensor> grad_above(torch::Tensor ptr, torch::Tensor idx, torch::Tensor kept, std::vector<torch::Tensor> gys,
                                      std::vector<torch::Tensor> xs, double tau) {
  const int64_t R = ptr.size(0) - 1, C = xs[0].size(1);
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(R, (1 << 18) / std::max<int64_t>(C, 1)));   // 1 MB of gradient
  auto G = torch::empty({RB, C}, xs[0].options());
  const int64_t* p = ptr.data_ptr<int64_t>(); const int32_t* ci = idx.data_ptr<int32_t>(); const bool* kp = kept.data_ptr<bool>();
  const float t = (float)tau;
  std::vector<int64_t> flat; std::vector<float> score;
  std::vector<int32_t> cols(C + 16);   // a row's columns at or above t
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
        if (m) {
          _mm512_mask_compressstoreu_epi32(cols.data() + nc, m, _mm512_add_epi32(_mm512_set1_epi32((int)c), LANE));
          nc += __builtin_popcount(m);
        }
#else
        for (int u = 0; u < 16; ++u) if (a[u] >= t) cols[nc++] = (int32_t)(c + u);
#endif
      }
      float sum = hsum(sums);
      for (; c < C; ++c) { const float a = std::fabs(row[c]); sum += a; if (a >= t) cols[nc++] = (int32_t)c; }
      if (!std::isfinite(sum)) for (c = 0; c < C; ++c) finite &= std::isfinite(row[c]);   // or only too large to sum
      int64_t k = p[r];                 // the row's kept active weights are no candidates: both lists ascending
      for (int64_t j = 0; j < nc; ++j) {
        const int32_t col = cols[j];
        while (k < p[r + 1] && ci[k] < col) ++k;
        if (k < p[r + 1] && ci[k] == col && kp[k]) continue;
        flat.push_back(r * C + col); score.push_back(std::fabs(row[col]));
      }
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

// a tensor of n entries holding v[j] at where[j] for each j with where[j] >= 0, zeros elsewhere (values moved to a new layout)
torch::Tensor move(torch::Tensor v, torch::Tensor where, int64_t n) {
  auto out = torch::zeros({n}, v.options());
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
