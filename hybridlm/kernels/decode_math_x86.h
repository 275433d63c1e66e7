// A decode step's attention part (qmatmul.h, KernelTable::attend) with 256-bit intrinsics, for the
// two x86 units (included after decode_math.h inside their target pragma and anonymous namespace).
//
// Why not the plain loop: it finishes every score (a dot of D = 64 floats) with a horizontal sum,
// and reads each cached key once per query head. Here 8 keys are dotted at once and their 8
// accumulators reduced together by one hadd tree into a vector of 8 scores, and each block of 8
// key rows (2 KB) serves all G query heads of its group while it is in L1. The weighted sum of
// values keeps 4 vectors of the output in registers over all positions. A float16 cache (T =
// uint16_t) is widened by F16C as it is loaded. (At SmolLM2's 500-1000 cached tokens the step's
// attention is bound by reading the cache from memory: this form and the plain one measured alike
// on one thread of the Xeon; the bytes read, float16 or float32 K/V, are what move it.)
// Same arithmetic as attend_plain up to summation order (tests pin the units together).

#pragma once

#include <immintrin.h>
#include <stdint.h>

namespace hlm {
namespace {

// 8 cached floats from a float or a float16 cache
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// [q . k_0, ..., q . k_7] for 8 key rows `stride` elements apart; D a multiple of 8
template <typename T>
inline __m256 dots8(const float* q, const T* k, int64_t stride, int64_t D) {
  __m256 a[8];
  for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qv, load8(k + r * stride + d), a[r]);
  }
  // hadd pairs within 128-bit lanes: u0 = [a0 a1 a2 a3 | a0 a1 a2 a3] (low and high halves' sums)
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

template <typename T>
void attend_x86(const float* q, int64_t G, const T* k, const T* v, int64_t S, int64_t D, int64_t stride, float scale,
                float* scores, float* out, float* m, float* l) {
  if (D % 32) {
    attend_plain(q, G, k, v, S, D, stride, scale, scores, out, m, l);
    return;
  }
  const __m256 vscale = _mm256_set1_ps(scale);
  int64_t s = 0;
  for (; s + 8 <= S; s += 8) {
    for (int64_t g = 0; g < G; ++g) {
      _mm256_storeu_ps(scores + g * S + s, _mm256_mul_ps(vscale, dots8(q + g * D, k + s * stride, stride, D)));
    }
  }
  for (; s < S; ++s) {
    for (int64_t g = 0; g < G; ++g) scores[g * S + s] = scale * dot_lanes(q + g * D, k + s * stride, D);
  }
  for (int64_t g = 0; g < G; ++g) {
    const float* p = scores + g * S;
    l[g] = exp_scores(scores + g * S, S, m + g);
    for (int64_t d = 0; d < D; d += 32) {
      __m256 o[4];
      for (int i = 0; i < 4; ++i) o[i] = _mm256_setzero_ps();
      for (int64_t t = 0; t < S; ++t) {
        const __m256 w = _mm256_set1_ps(p[t]);
        const T* row = v + t * stride + d;
        for (int i = 0; i < 4; ++i) o[i] = _mm256_fmadd_ps(w, load8(row + 8 * i), o[i]);
      }
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + g * D + d + 8 * i, o[i]);
    }
  }
}

}  // namespace
}  // namespace hlm
