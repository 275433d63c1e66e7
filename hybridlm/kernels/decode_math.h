// The float math of a one-token decode step besides the matmuls (decode_step.cpp): attention of
// query heads over their cached keys, and SwiGLU's silu(gate) * up. Plain C++ written so the
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

// IEEE half bits -> float (exact); K/V caches of `--kv-cache float16` and float16 weight scales
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float32
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

inline float as_float(float x) { return x; }
inline float as_float(uint16_t h) { return f16_to_f32(h); }

template <typename T>
inline float dot_lanes(const float* a, const T* b, int64_t n) {
  float acc[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; ++j) acc[j] += a[i + j] * as_float(b[i + j]);
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * as_float(b[i]);
  for (int j = 0; j < LANES; ++j) s += acc[j];
  return s;
}

// Softmax numerators of one head's scores, in place: m = max, scores[s] = e^(scores[s] - m),
// returns l = their sum (16 partial sums, so the loop vectorises without reassociation licence).
inline float exp_scores(float* scores, int64_t S, float* m) {
  float top = -3.0e38f;
  for (int64_t s = 0; s < S; ++s) top = scores[s] > top ? scores[s] : top;
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
  *m = top;
  return total;
}

// One part of a decode step's attention (qmatmul.h, KernelTable::attend): G query heads sharing one
// K/V head, over S cached positions, K/V in float (T = float) or IEEE half bits (T = uint16_t). The
// plain form, for every unit; the x86 units use it when the head dim is not a multiple of 32.
template <typename T>
void attend_plain(const float* q, int64_t G, const T* k, const T* v, int64_t S, int64_t D, int64_t stride,
                  float scale, float* scores, float* out, float* m, float* l) {
  for (int64_t g = 0; g < G; ++g) {
    float* sc = scores + g * S;
    for (int64_t s = 0; s < S; ++s) sc[s] = scale * dot_lanes(q + g * D, k + s * stride, D);
    l[g] = exp_scores(sc, S, m + g);
    float* o = out + g * D;
    for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
    for (int64_t s = 0; s < S; ++s) {
      const float p = sc[s];
      const T* row = v + s * stride;
      for (int64_t d = 0; d < D; ++d) o[d] += p * as_float(row[d]);
    }
  }
}

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x))
void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

}  // namespace
}  // namespace hlm
