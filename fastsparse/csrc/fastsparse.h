// What fastsparse's sparse kernels share: includes, the vector type and its helpers, the products' inner loop, the one threading constant, and
// the kernels' declarations. One file per concern: linear.cpp (the linear product and its gradients), layout.cpp (compressed
// rows: building, updating, selecting, densifying), conv.cpp (convolutions), masks.cpp (masked compute's passes); bindings.cpp makes them a Python module.
// `fastsparse.compute.kernels()` compiles them with -O3 -march=native -fopenmp, so `v16` uses the machine's vector registers.
// Values are float32, column indices int32, row pointers and positions int64; fastsparse.compute passes contiguous CPU
// tensors (the kernels check the types, not the layout).
#pragma once
#include <torch/types.h>   // tensors and their factories: a third of torch/extension.h's compile time
#include <omp.h>
#include <algorithm>
#include <type_traits>
#include <vector>

constexpr int64_t PAR = 1 << 18;   // below this much work a kernel runs on one thread: a parallel region would cost more
constexpr int64_t PANEL = 64;      // batch rows per panel of the linear kernels' activations (linear.cpp)

typedef float v16 __attribute__((vector_size(64)));   // 16 floats: one AVX-512 register, or two AVX2 ones
static inline v16 ld(const float* p) { v16 v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
static inline void st(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// |v|, lane by lane: the sign bit cleared
typedef int32_t i16 __attribute__((vector_size(64)));
static inline v16 vabs(v16 v) { return (v16)((i16)v & 0x7fffffff); }

// the sum of a vector's 16 lanes, in halves
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
static inline float hsum(v16 v) {
  v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// a[u] += the sum over entries k in [s, e) of w(k) times the NV vectors at x + at(k): the inner loop of the products over a
// run of 16 * NV lanes (linear.cpp, conv.cpp). U entries at a time, each into its own sums a[u], so that the adds of one
// entry do not wait on the previous entry's (an add takes four cycles, a load from cache fewer)
template <int NV, int U, class W, class At>
static inline void axpy_acc(v16 (&a)[U][NV], W w, At at, const float* __restrict x, int64_t s, int64_t e) {
  int64_t k = s;
  for (; k + U <= e; k += U)
    for (int u = 0; u < U; ++u) { const float wk = w(k + u); const float* xr = x + at(k + u); for (int v = 0; v < NV; ++v) a[u][v] += wk * ld(xr + 16 * v); }
  for (; k < e; ++k) { const float wk = w(k); const float* xr = x + at(k); for (int v = 0; v < NV; ++v) a[0][v] += wk * ld(xr + 16 * v); }
}
// o's NV vectors (+)= the U sums
template <int NV, int U> static inline void store_sum(v16 (&a)[U][NV], float* __restrict o, bool add) {
  for (int v = 0; v < NV; ++v) {
    v16 t = add ? ld(o + 16 * v) : v16{0};
    for (int u = 0; u < U; ++u) t += a[u][v];
    st(o + 16 * v, t);
  }
}
// entries per pass for NV vectors of lanes: enough sums in flight to hide the add's latency, few enough to stay in registers
template <int NV> constexpr int UNROLL = NV == 1 ? 4 : NV == 4 ? 1 : 2;
template <int NV, class W, class At>
static inline void axpy_lanes(W w, At at, const float* __restrict x, int64_t s, int64_t e, float* __restrict o, bool add) {
  v16 a[UNROLL<NV>][NV] = {};
  axpy_acc(a, w, at, x, s, e);
  store_sum(a, o, add);
}
// the same over the 16, 32 or 48 lanes left after runs of 64 (nv = 1, 2, 3 vectors)
template <class W, class At>
static inline void axpy_rest(int64_t nv, W w, At at, const float* __restrict x, int64_t s, int64_t e, float* __restrict o, bool add) {
  if (nv == 1) axpy_lanes<1>(w, at, x, s, e, o, add);
  else if (nv == 2) axpy_lanes<2>(w, at, x, s, e, o, add);
  else if (nv == 3) axpy_lanes<3>(w, at, x, s, e, o, add);
}

// linear.cpp
torch::Tensor spmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor x, int64_t rows, int64_t B, torch::Tensor out);
torch::Tensor sddmm(torch::Tensor ptr, torch::Tensor idx, torch::Tensor gy, torch::Tensor x, int64_t B);
torch::Tensor to_panels(torch::Tensor a, torch::Tensor out);
torch::Tensor from_panels(torch::Tensor t, int64_t B, int64_t C, torch::Tensor bias);
torch::Tensor linear_fwd(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor x, torch::Tensor bias);
std::vector<torch::Tensor> linear_bwd(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor tptr, torch::Tensor tidx,
                                      torch::Tensor vt, torch::Tensor x, torch::Tensor gy, bool want_gx, bool want_gv, bool want_gb);

// layout.cpp
std::vector<torch::Tensor> csr_transpose(torch::Tensor ptr, torch::Tensor idx, int64_t cols);
std::vector<torch::Tensor> relayout(torch::Tensor kept, torch::Tensor optr, torch::Tensor oidx, torch::Tensor grown, int64_t cols);
torch::Tensor above(torch::Tensor scores, torch::Tensor mask, double tau);
torch::Tensor top_k(torch::Tensor scores, torch::Tensor keys, int64_t k, bool largest);
torch::Tensor move(torch::Tensor v, torch::Tensor where, int64_t n, torch::Tensor out);
torch::Tensor flat(torch::Tensor ptr, torch::Tensor idx, int64_t cols);
torch::Tensor grad_at(std::vector<torch::Tensor> gys, std::vector<torch::Tensor> xs, torch::Tensor at, int64_t cols);
torch::Tensor transpose_values(torch::Tensor perm, torch::Tensor val);
std::vector<torch::Tensor> grad_above(torch::Tensor ptr, torch::Tensor idx, torch::Tensor kept, std::vector<torch::Tensor> gys,
                                      std::vector<torch::Tensor> xs, double tau);
torch::Tensor densify(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, int64_t cols);

// conv.cpp
torch::Tensor to_chwn(torch::Tensor x, int64_t ph, int64_t pw, int64_t Np, torch::Tensor out);
torch::Tensor from_chwn(torch::Tensor a, int64_t N, torch::Tensor bias);
torch::Tensor conv_fwd(torch::Tensor ptr, torch::Tensor idx, torch::Tensor val, torch::Tensor xp,
                       int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t Ho, int64_t Wo, torch::Tensor out);
torch::Tensor conv_bwd_input(torch::Tensor tptr, torch::Tensor tidx, torch::Tensor perm, torch::Tensor val, torch::Tensor gy,
                             int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                             int64_t ph, int64_t pw, torch::Tensor out);
torch::Tensor conv_bwd_values(torch::Tensor ptr, torch::Tensor idx, torch::Tensor gy, torch::Tensor xp,
                              int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh, int64_t dw);

// masks.cpp
void zero_inactive(torch::Tensor x, torch::Tensor mask);
void split_inactive(torch::Tensor g, torch::Tensor mask, torch::Tensor out, bool add);
int64_t or_count(torch::Tensor ex, torch::Tensor mask);
