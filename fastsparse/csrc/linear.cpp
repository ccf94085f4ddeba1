// The linear product with a weight held as compressed rows, and its gradients: y = x W^T (spmm over the rows), the
// input's gradient gx = gy W (spmm over the transposed structure), the values' gradient (sddmm). Activations are held
// transposed, (features, batch), so that each weight multiplies a contiguous row of the batch; `transpose` moves them.
#include "fastsparse.h"

// out (rows x B) = A (rows x cols, compressed rows: ptr, idx, val, gathered through perm when given) @ x (cols x B)
template <bool PERM>
static void csr_mm(const int64_t* __restrict ptr, const int32_t* __restrict idx, const float* __restrict val,
                   const int64_t* __restrict perm, const float* __restrict x, float* __restrict out, int64_t rows, int64_t B) {
  #pragma omp parallel for schedule(dynamic, 32) if (ptr[rows] * B > PAR)
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * B;
    const int64_t s = ptr[r], e = ptr[r + 1];
    int64_t b0 = 0;
    for (; b0 + 64 <= B; b0 += 64) {
      v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      for (int64_t k = s; k < e; ++k) {
        const float w = PERM ? val[perm[k]] : val[k];
        const float* xr = x + (int64_t)idx[k] * B + b0;
        a0 += w * ld(xr); a1 += w * ld(xr + 16); a2 += w * ld(xr + 32); a3 += w * ld(xr + 48);
      }
      st(o + b0, a0); st(o + b0 + 16, a1); st(o + b0 + 32, a2); st(o + b0 + 48, a3);
    }
    for (; b0 + 16 <= B; b0 += 16) {
      v16 a0 = {0};
      for (int64_t k = s; k < e; ++k) a0 += (PERM ? val[perm[k]] : val[k]) * ld(x + (int64_t)idx[k] * B + b0);
      st(o + b0, a0);
    }
    for (; b0 < B; ++b0) {
      float a = 0;
      for (int64_t k = s; k < e; ++k) a += (PERM ? val[perm[k]] : val[k]) * x[(int64_t)idx[k] * B + b0];
      o[b0] = a;
    }
  }
}

torch::Tensor spmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor perm, torch::Tensor x, int64_t rows) {
  auto out = torch::empty({rows, x.size(1)}, x.options());
  if (perm.numel()) csr_mm<true>(ptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(), val.data_ptr<float>(), perm.data_ptr<int64_t>(),
                                 x.data_ptr<float>(), out.data_ptr<float>(), rows, x.size(1));
  else csr_mm<false>(ptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(), val.data_ptr<float>(), nullptr,
                     x.data_ptr<float>(), out.data_ptr<float>(), rows, x.size(1));
  return out;
}

// grad of the values: g[k] = dot(gy[row_k, :], x[col_k, :]) over the batch, for each stored entry of a CSR matrix
torch::Tensor sddmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor gy, torch::Tensor x) {
  const int64_t rows = ptr.size(0) - 1, B = x.size(1);
  auto g = torch::empty({idx.size(0)}, x.options());
  const int64_t* __restrict p = ptr.data_ptr<int64_t>(); const int32_t* __restrict ci = idx.data_ptr<int32_t>();
  const float* __restrict gyp = gy.data_ptr<float>(); const float* __restrict xp = x.data_ptr<float>(); float* __restrict gp = g.data_ptr<float>();
  #pragma omp parallel for schedule(dynamic, 32) if (p[rows] * B > PAR)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = p[r]; k < p[r + 1]; ++k) gp[k] = 0.f;
    int64_t b0 = 0;
    for (; b0 + 64 <= B; b0 += 64) {       // this row's gradient block stays in registers for all its entries
      const float* gr = gyp + r * B + b0;
      const v16 g0 = ld(gr), g1 = ld(gr + 16), g2 = ld(gr + 32), g3 = ld(gr + 48);
      for (int64_t k = p[r]; k < p[r + 1]; ++k) {
        const float* xr = xp + (int64_t)ci[k] * B + b0;
        gp[k] += hsum(g0 * ld(xr) + g1 * ld(xr + 16) + g2 * ld(xr + 32) + g3 * ld(xr + 48));
      }
    }
    for (; b0 < B; ++b0) {
      const float gv = gyp[r * B + b0];
      for (int64_t k = p[r]; k < p[r + 1]; ++k) gp[k] += gv * xp[(int64_t)ci[k] * B + b0];
    }
  }
  return g;
}

// out (cols x rows) = a (rows x cols) transposed, plus bias[i] on each of out's columns i when given: 32 x 32 blocks, in parallel
torch::Tensor transpose(torch::Tensor a, torch::Tensor bias) {
  const int64_t R = a.size(0), C = a.size(1);
  auto out = torch::empty({C, R}, a.options());
  const float* ap = a.data_ptr<float>(); float* o = out.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t nbi = (R + 31) / 32, nbj = (C + 31) / 32;
  #pragma omp parallel for schedule(static) if (R * C >= PAR / 8)
  for (int64_t blk = 0; blk < nbi * nbj; ++blk) {
    const int64_t i0 = (blk / nbj) * 32, j0 = (blk % nbj) * 32, ie = std::min(R, i0 + 32), je = std::min(C, j0 + 32);
    for (int64_t j = j0; j < je; ++j)
      for (int64_t i = i0; i < ie; ++i) o[j * R + i] = ap[i * C + j] + (b ? b[i] : 0.f);
  }
  return out;
}
