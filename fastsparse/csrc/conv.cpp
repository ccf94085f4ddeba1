// Convolutions with a weight held as compressed rows of its (out, in * kh * kw) view.
#include "fastsparse.h"

// Convolutions hold images as (channels, height, width, batch): the batch innermost, padded to a multiple of 16 lanes,
// so that each weight multiplies contiguous vectors, as in `csr_mm` (linear.cpp). `out`, when not empty, is where a
// result goes (a buffer kept between calls: a large new tensor costs a page fault per 4 KB at its first write).
// x (N, C, H, W) -> (C, H + 2ph, W + 2pw, Np), zeros in the padding: per (channel, row), a blocked (N x W) -> (W x N) transpose
torch::Tensor to_chwn(torch::Tensor x, int64_t ph, int64_t pw, int64_t Np, torch::Tensor out) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Hp = H + 2 * ph, Wp = W + 2 * pw;
  if (!out.numel()) out = torch::empty({C, Hp, Wp, Np}, x.options());
  if (ph || pw || Np != N) out.zero_();
  const float* xp = x.data_ptr<float>(); float* o = out.data_ptr<float>();
  const int64_t sn = C * H * W;
  #pragma omp parallel for schedule(static) if (N * C * H * W > PAR)
  for (int64_t ch = 0; ch < C * H; ++ch) {
    const int64_t c = ch / H, h = ch % H;
    float* orow = o + ((c * Hp + h + ph) * Wp + pw) * Np;
    const float* xr = xp + (c * H + h) * W;
    for (int64_t n0 = 0; n0 < N; n0 += 16)
      for (int64_t w0 = 0; w0 < W; w0 += 16) {
        const int64_t ne = std::min<int64_t>(N, n0 + 16), we = std::min<int64_t>(W, w0 + 16);
        for (int64_t w = w0; w < we; ++w)
          for (int64_t n = n0; n < ne; ++n) orow[w * Np + n] = xr[n * sn + w];
      }
  }
  return out;
}

// (C, H, W, Np) -> (N, C, H, W), the first N lanes; plus bias[c] when given
torch::Tensor from_chwn(torch::Tensor a, int64_t N, torch::Tensor bias) {
  const int64_t C = a.size(0), H = a.size(1), W = a.size(2), Np = a.size(3);
  auto out = torch::empty({N, C, H, W}, a.options());
  const float* ap = a.data_ptr<float>(); float* o = out.data_ptr<float>(); const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t sn = C * H * W;
  #pragma omp parallel for schedule(static) if (N * C * H * W > PAR)
  for (int64_t ch = 0; ch < C * H; ++ch) {
    const int64_t c = ch / H, h = ch % H; const float bc = b ? b[c] : 0.f;
    const float* arow = ap + (c * H + h) * W * Np;
    float* orow = o + (c * H + h) * W;
    for (int64_t n0 = 0; n0 < N; n0 += 16)
      for (int64_t w0 = 0; w0 < W; w0 += 16) {
        const int64_t ne = std::min<int64_t>(N, n0 + 16), we = std::min<int64_t>(W, w0 + 16);
        for (int64_t n = n0; n < ne; ++n)
          for (int64_t w = w0; w < we; ++w) orow[n * sn + w] = arow[w * Np + n] + bc;
      }
  }
  return out;
}

// for each entry (a column c * KH * KW + kh * KW + kw), its input's offset in xp from the corner of an output position's window
static std::vector<int64_t> offsets(const int32_t* ci, int64_t nnz, int64_t KH, int64_t KW, int64_t dh, int64_t dw, int64_t Hp, int64_t Wp, int64_t Np) {
  std::vector<int64_t> off(nnz);
  for (int64_t k = 0; k < nnz; ++k) {
    const int64_t col = ci[k], c = col / (KH * KW), r = col % (KH * KW);
    off[k] = ((c * Hp + (r / KW) * dh) * Wp + (r % KW) * dw) * Np;
  }
  return off;
}

// y (O, Ho, Wo, Np): y[o, i, j] = sum over row o's entries of w * xp[c, i*sh + kh*dh, j*sw + kw*dw]
torch::Tensor conv_fwd(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor xp,
                       int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t Ho, int64_t Wo, torch::Tensor out) {
  const int64_t Hp = xp.size(1), Wp = xp.size(2), Np = xp.size(3), O = ptr.size(0) - 1;
  auto y = out.numel() ? out : torch::empty({O, Ho, Wo, Np}, xp.options());
  auto offv = offsets(idx.data_ptr<int32_t>(), idx.size(0), KH, KW, dh, dw, Hp, Wp, Np);
  const int64_t* __restrict p = ptr.data_ptr<int64_t>(); const float* __restrict v = val.data_ptr<float>();
  const int64_t* __restrict off = offv.data(); const float* __restrict x = xp.data_ptr<float>(); float* __restrict yp = y.data_ptr<float>();
  // input channels in blocks whose window (CB channels x KH x KW x 64 lanes) stays in L1 for every output channel
  const int64_t C = xp.size(0), KK = KH * KW, lanes = std::min<int64_t>(Np, 64);
  const int64_t CB = C * KK * lanes <= 49152 ? C : std::max<int64_t>(1, 8192 / (KK * lanes)), nblk = (C + CB - 1) / CB;   // 192 KB, 32 KB
  std::vector<int64_t> bp(O * (nblk + 1));      // row o's entries of block b: bp[o*(nblk+1)+b] .. bp[o*(nblk+1)+b+1]
  const int32_t* ci = idx.data_ptr<int32_t>();
  for (int64_t o = 0; o < O; ++o) {
    int64_t k = p[o];
    for (int64_t bl = 0; bl < nblk; ++bl) { bp[o * (nblk + 1) + bl] = k; while (k < p[o + 1] && ci[k] < (bl + 1) * CB * KK) ++k; }
    bp[o * (nblk + 1) + nblk] = p[o + 1];
  }
  #pragma omp parallel for schedule(dynamic, 1) if (p[O] * Ho * Wo * Np > PAR)
  for (int64_t q = 0; q < Ho * Wo; ++q) {
    const int64_t i = q / Wo, j = q % Wo;
    const float* xq = x + (i * sh * Wp + j * sw) * Np;
    for (int64_t bl = 0; bl < nblk; ++bl)
      for (int64_t o = 0; o < O; ++o) {
        const int64_t s = bp[o * (nblk + 1) + bl], e = bp[o * (nblk + 1) + bl + 1];
        float* out = yp + (o * Ho * Wo + q) * Np;
        if (s == e && bl > 0) continue;
        int64_t b0 = 0;
        for (; b0 + 64 <= Np; b0 += 64) {
          v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
          if (bl > 0) { a0 = ld(out + b0); a1 = ld(out + b0 + 16); a2 = ld(out + b0 + 32); a3 = ld(out + b0 + 48); }
          for (int64_t k = s; k < e; ++k) {
            const float w = v[k]; const float* xr = xq + off[k] + b0;
            a0 += w * ld(xr); a1 += w * ld(xr + 16); a2 += w * ld(xr + 32); a3 += w * ld(xr + 48);
          }
          st(out + b0, a0); st(out + b0 + 16, a1); st(out + b0 + 32, a2); st(out + b0 + 48, a3);
        }
        if (b0 < Np)                     // 16, 32 or 48 lanes left: one pass over the entries
          axpy_rest((Np - b0) / 16, [v](int64_t k) { return v[k]; }, [off](int64_t k) { return off[k]; }, xq + b0, s, e, out + b0, bl > 0);
      }
  }
  return y;
}

// grad of the input, (C, H, W, Np) unpadded: gx[c, h, w] = sum over (kh, kw) and column (c, kh, kw)'s entries of w * gy[o, i, j]
// where h = i*sh + kh*dh - ph (likewise w): a gather, no races
torch::Tensor conv_bwd_input(torch::Tensor tptr, torch::Tensor tidx, torch::Tensor perm, torch::Tensor val, torch::Tensor gy,
                             int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                             int64_t ph, int64_t pw, torch::Tensor out) {
  const int64_t Ho = gy.size(1), Wo = gy.size(2), Np = gy.size(3), KK = KH * KW;
  auto gx = out.numel() ? out : torch::empty({C, H, W, Np}, gy.options());
  const int64_t* __restrict tp = tptr.data_ptr<int64_t>(); const int32_t* __restrict ti = tidx.data_ptr<int32_t>();
  const int64_t* __restrict pm = perm.data_ptr<int64_t>(); const float* __restrict v = val.data_ptr<float>();
  const float* __restrict g = gy.data_ptr<float>(); float* __restrict gp = gx.data_ptr<float>();
  const int64_t rowstride = Ho * Wo * Np;
  #pragma omp parallel if (tp[C * KK] * Ho * Wo * Np > PAR)
  {
  std::vector<int64_t> rr(KK), gq_off(KK);
  #pragma omp for schedule(dynamic, 1)
  for (int64_t hw = 0; hw < H * W; ++hw) {
    const int64_t h = hw / W, w = hw % W;
    // the (kh, kw) that reach this input position, and the output position each reaches: once per position, not per channel
    int64_t nr = 0;
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t ih = h + ph - kh * dh;
      if (ih < 0 || ih % sh || ih / sh >= Ho) continue;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t iw = w + pw - kw * dw;
        if (iw < 0 || iw % sw || iw / sw >= Wo) continue;
        rr[nr] = kh * KW + kw; gq_off[nr] = ((ih / sh) * Wo + iw / sw) * Np; ++nr;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      float* out = gp + ((c * H + h) * W + w) * Np;
      for (int64_t b0 = 0; b0 < Np; b0 += 64) {
        // the run's vectors (nb: 4, or the 1-3 left) summed in registers over every (kh, kw) and entry reaching here
        const auto run = [&](auto nbc) {
          constexpr int NB = decltype(nbc)::value;
          v16 a[UNROLL<NB>][NB] = {};
          for (int64_t u = 0; u < nr; ++u) {
            const int64_t col = c * KK + rr[u];
            axpy_acc(a, [v, pm](int64_t t) { return v[pm[t]]; }, [ti, rowstride](int64_t t) { return ti[t] * rowstride; },
                     g + gq_off[u] + b0, tp[col], tp[col + 1]);
          }
          store_sum(a, out + b0, false);
        };
        switch (std::min<int64_t>(4, (Np - b0) / 16)) {
          case 4: run(std::integral_constant<int, 4>{}); break;
          case 3: run(std::integral_constant<int, 3>{}); break;
          case 2: run(std::integral_constant<int, 2>{}); break;
          default: run(std::integral_constant<int, 1>{});
        }
      }
    }
  }
  }
  return gx;
}

// acc[k - s] += g (NV vectors) times the NV vectors at x + off[k], lane by lane, for entries s .. e
template <int NV>
static inline void dots(const float* __restrict gq, const float* __restrict x, const int64_t* __restrict off, int64_t s, int64_t e, v16* __restrict acc) {
  v16 g[NV];
  for (int v = 0; v < NV; ++v) g[v] = ld(gq + 16 * v);
  for (int64_t k = s; k < e; ++k) {
    const float* xr = x + off[k];
    v16 a = g[0] * ld(xr);
    for (int v = 1; v < NV; ++v) a += g[v] * ld(xr + 16 * v);
    acc[k - s] += a;
  }
}

// grad of the values: gv[k] = sum over output positions of dot(gy[o, i, j], xp[c, i*sh + kh*dh, j*sw + kw*dw]) (the padded batch adds 0)
torch::Tensor conv_bwd_values(torch::Tensor ptr, torch::Tensor idx, torch::Tensor gy, torch::Tensor xp,
                              int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw) {
  const int64_t Hp = xp.size(1), Wp = xp.size(2), Np = xp.size(3), O = ptr.size(0) - 1, Ho = gy.size(1), Wo = gy.size(2);
  auto gv = torch::empty({idx.size(0)}, xp.options());
  auto offv = offsets(idx.data_ptr<int32_t>(), idx.size(0), KH, KW, dh, dw, Hp, Wp, Np);
  const int64_t* __restrict p = ptr.data_ptr<int64_t>(); const int64_t* __restrict off = offv.data();
  const float* __restrict g = gy.data_ptr<float>(); const float* __restrict x = xp.data_ptr<float>(); float* __restrict gvp = gv.data_ptr<float>();
  constexpr int64_t OB = 32;   // output channels per block: their accumulators stay in cache while the positions pass
  #pragma omp parallel for schedule(dynamic, 1) if (p[O] * Ho * Wo * Np > PAR)
  for (int64_t o0 = 0; o0 < O; o0 += OB) {
    const int64_t oe = std::min(O, o0 + OB), s0 = p[o0];
    std::vector<v16> acc(p[oe] - s0, v16{0});
    for (int64_t q = 0; q < Ho * Wo; ++q) {
      const int64_t i = q / Wo, j = q % Wo;
      const float* xq = x + (i * sh * Wp + j * sw) * Np;
      for (int64_t o = o0; o < oe; ++o) {
        const float* gq = g + (o * Ho * Wo + q) * Np;
        const int64_t s = p[o], e = p[o + 1];
        int64_t b0 = 0;
        for (; b0 + 64 <= Np; b0 += 64) {
          const v16 g0 = ld(gq + b0), g1 = ld(gq + b0 + 16), g2 = ld(gq + b0 + 32), g3 = ld(gq + b0 + 48);
          for (int64_t k = s; k < e; ++k) {
            const float* xr = xq + off[k] + b0;
            acc[k - s0] += g0 * ld(xr) + g1 * ld(xr + 16) + g2 * ld(xr + 32) + g3 * ld(xr + 48);
          }
        }
        switch ((Np - b0) / 16) {       // 16, 32 or 48 lanes left: one pass over the entries
          case 1: dots<1>(gq + b0, xq + b0, off, s, e, acc.data() + (s - s0)); break;
          case 2: dots<2>(gq + b0, xq + b0, off, s, e, acc.data() + (s - s0)); break;
          case 3: dots<3>(gq + b0, xq + b0, off, s, e, acc.data() + (s - s0)); break;
        }
      }
    }
    for (int64_t k = s0; k < p[oe]; ++k) gvp[k] = hsum(acc[k - s0]);
  }
  return gv;
}
