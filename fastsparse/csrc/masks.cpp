// Masked compute's passes over a weight-sized tensor: zeroing a weight or its gradient where the mask is false, and keeping
// a copy of a gradient (what grow scores read) while zeroing its inactive part (what the optimizer must not see). Memory-bound loops
// of selects that the compiler vectorizes; a select (not a product) so that NaN and inf at inactive entries become 0.
#include "fastsparse.h"

static void check(const torch::Tensor& x, const torch::Tensor& mask, const char* what) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && mask.scalar_type() == torch::kBool && x.numel() == mask.numel()
              && x.is_contiguous() && mask.is_contiguous(), what, ": a contiguous float32 tensor and a bool mask of as many entries");
}

// x = mask ? x : 0, in place
void zero_inactive(torch::Tensor x, torch::Tensor mask) {
  check(x, mask, "zero_inactive");
  float* p = x.data_ptr<float>(); const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  const int64_t n = x.numel();
  #pragma omp parallel for schedule(static) if (n > PAR)
  for (int64_t i = 0; i < n; ++i) p[i] = m[i] ? p[i] : 0.f;
}

// out = g, or with `add` out = mask ? g : out + g (g then holds the active gradient of earlier passes plus the inactive
// gradient of this one), then g = mask ? g : 0, in one pass
void split_inactive(torch::Tensor g, torch::Tensor mask, torch::Tensor out, bool add) {
  check(g, mask, "split_inactive"); check(out, mask, "split_inactive");
  float* p = g.data_ptr<float>(); float* o = out.data_ptr<float>();
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()); const int64_t n = g.numel();
  if (add) {
    #pragma omp parallel for schedule(static) if (n > PAR)
    for (int64_t i = 0; i < n; ++i) { const float v = p[i]; o[i] = m[i] ? v : o[i] + v; p[i] = m[i] ? v : 0.f; }
  } else {
    #pragma omp parallel for schedule(static) if (n > PAR)
    for (int64_t i = 0; i < n; ++i) { const float v = p[i]; o[i] = v; p[i] = m[i] ? v : 0.f; }
  }
}

// ex |= mask (bool tensors of one size), and how many entries of ex are true after: one pass (the positions ever active),
// eight bools to a word (each byte 0 or 1, so a word's popcount is its count)
int64_t or_count(torch::Tensor ex, torch::Tensor mask) {
  const int64_t n = ex.numel(), words = n / 8; uint8_t* e = (uint8_t*)ex.data_ptr<bool>(); const uint8_t* m = (const uint8_t*)mask.data_ptr<bool>();
  int64_t c = 0;
  #pragma omp parallel for reduction(+ : c) schedule(static) if (n > 4 * PAR)
  for (int64_t i = 0; i < words; ++i) {
    uint64_t a, b; __builtin_memcpy(&a, e + 8 * i, 8); __builtin_memcpy(&b, m + 8 * i, 8);
    a |= b; __builtin_memcpy(e + 8 * i, &a, 8); c += __builtin_popcountll(a);
  }
  for (int64_t i = 8 * words; i < n; ++i) { e[i] |= m[i]; c += e[i]; }
  return c;
}
