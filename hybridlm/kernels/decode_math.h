// The float math of a one-token decode step besides the matmuls (decode_step.cpp): attention of
// one query head over its cached keys, and SwiGLU's silu(gate) * up. Plain C++ written so the
// compiler vectorises it for the unit that includes it: each ISA unit includes this file inside
// its target pragma and anonymous namespace (qmatmul_avx512.cpp, qmatmul_avx2.cpp,
// qmatmul_portable.cpp), as with qmatmul_x86.h. Loops keep 16 independent partial sums, so the
// vectoriser needs no licence to reorder a float sum (the units are built without fast-math).
//
// exp is a Cephes-style polynomial (range reduction to [-ln2/2, ln2/2], degree 6, |rel err| < 2e-7
// over the range softmax uses) instead of libm's expf: a call per element would keep the loop
// scalar, and a decode step takes ~10^5 exponentials.

#pragma once

#include <stdint.h>
#include <string.h>

namespace hlm {
namespace {

constexpr int LANES = 16;

inline float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // k = round(x / ln2) by the 1.5 * 2^23 trick (exact for |k| < 2^22, no rounding-mode call)
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;  // ln2 in two parts: r exact to ~1 ulp
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  return p * scale;
}

inline float dot_lanes(const float* a, const float* b, int64_t n) {
  float acc[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < LANES; ++j) s += acc[j];
  return s;
}

// out (D) = softmax(scale * q . k_s) over s < S, weighted sum of v_s. k, v: S rows of D floats,
// `stride` floats apart (one head of a (H_kv, capacity, D) cache). scores: S floats of scratch.
void attend_head(const float* q, const float* k, const float* v, int64_t S, int64_t D, int64_t stride, float scale,
                 float* scores, float* out) {
  float top = -3.0e38f;
  for (int64_t s = 0; s < S; ++s) {
    scores[s] = scale * dot_lanes(q, k + s * stride, D);
    top = scores[s] > top ? scores[s] : top;
  }
  float sum[LANES] = {};
  int64_t s = 0;
  for (; s + LANES <= S; s += LANES)
    for (int j = 0; j < LANES; ++j) {
      scores[s + j] = exp_poly(scores[s + j] - top);
      sum[j] += scores[s + j];
    }
  float total = 0.0f;
  for (; s < S; ++s) {
    scores[s] = exp_poly(scores[s] - top);
    total += scores[s];
  }
  for (int j = 0; j < LANES; ++j) total += sum[j];
  for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
  for (int64_t t = 0; t < S; ++t) {
    const float p = scores[t];
    const float* row = v + t * stride;
    for (int64_t d = 0; d < D; ++d) out[d] += p * row[d];
  }
  const float inv = 1.0f / total;
  for (int64_t d = 0; d < D; ++d) out[d] *= inv;
}

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x))
void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

}  // namespace
}  // namespace hlm
