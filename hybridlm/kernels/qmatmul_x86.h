// The x86 SIMD kernels, written once for 256-bit registers and included by exactly two units:
//   qmatmul_avx2.cpp    AVX2 + FMA + F16C:  integer dots with maddubs (u8 x s8 -> s16 pairs) + madd
//   qmatmul_avx512.cpp  the same plus AVX-512 VNNI (VL): integer dots with one dpbusd
// HLM_VNNI (0 or 1) is the only difference between them, in `dot_u8s8` and the int8 weight trick.
// Both stay at 256 bits: the loops are bound by memory, and one shape for both keeps the AVX-512
// unit (which the AVX2 development machine cannot execute) a mirror of the tested AVX2 one.
// Everything is in an anonymous namespace: nothing compiled for one ISA is visible to another.
//
// Work of one call: output rows [n0, n1) for all M activation rows, in tiles of 4 weight rows x
// RA = 1 or 2 activation rows. Each 32-input block of the activation is loaded once per tile and
// used for its 4 weight rows; each weight tile (a few hundred bytes per row) stays in L1 while
// the activation pairs go past it, so weights are read from memory once per call whatever M is.
//
// Per block (qmatmul.h): fast  acc += float(int dot(q, xq)) * (s * dx)      (as llama.cpp's vec_dot)
//                        exact t   += dequantized codes * x (4 FMAs)         acc += t * s per group
// and once per group the offset term c * S(g) in a scalar.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "qmatmul.h"

#ifndef HLM_VNNI
#error "define HLM_VNNI before including qmatmul_x86.h"
#endif

namespace hlm {
namespace {

constexpr int64_t BLOCK = 32;
constexpr int64_t PREFETCH_TILES = 2;
enum Kind { INT4_SYM, INT4_ASYM, INT8, LUT4 };

constexpr int64_t bytes_per_block(int kind) { return kind == INT8 ? BLOCK : BLOCK / 2; }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline float load_param(const void* p, int f16, int64_t i) {
  return f16 ? _cvtsh_ss(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

// 16 bytes of a 32-input run -> 32 codes as bytes in input order (low nibbles, then high)
inline __m256i nibbles(const uint8_t* p) {
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(c, 4), c);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// sum over groups of 4 adjacent bytes of u8 * s8 -> 8 int32
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if HLM_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  // each u8 * s8 pair sum is at most 2 * 255 * 128 in magnitude: only u <= 15 (4-bit codes) or
  // |u| <= 128 with the sign trick (int8) keep it inside int16, which is why int8 goes through abs
  const __m256i pairs = _mm256_maddubs_epi16(u, s);
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

// the integer dot of one block of weight row codes with one block of quantized activations
template <int KIND>
inline __m256i block_dot(const uint8_t* p, __m256i xq) {
  if constexpr (KIND == INT8) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
#if HLM_VNNI
    // u8 = w + 128 (flip the sign bit); the -128 * sum(xq) this adds is taken back in the group
    // offset term (c = -128 s, see `coefs`), exactly as int4's -8
    return dot_u8s8(_mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80))), xq);
#else
    // |w| * (xq with w's sign): the same products with an unsigned left operand
    return dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
#endif
  } else {
    return dot_u8s8(nibbles(p), xq);
  }
}

// 32 codes of one block as 4 x 8 floats (the dequantized value before the scale, lut applied)
template <int KIND>
inline void block_floats(const uint8_t* p, __m256 lut_lo, __m256 lut_hi, __m256 out[4]) {
  if constexpr (KIND == INT8) {
    for (int k = 0; k < 4; ++k) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * k));
      out[k] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    }
  } else {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(c, mask), hi = _mm_and_si128(_mm_srli_epi16(c, 4), mask);
    const __m256i idx[4] = {_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                            _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))};
    for (int k = 0; k < 4; ++k) {
      if constexpr (KIND == LUT4) {  // 16-entry table in two registers; bit 3 of the code picks one
        const __m256 a = _mm256_permutevar8x32_ps(lut_lo, idx[k]), b = _mm256_permutevar8x32_ps(lut_hi, idx[k]);
        out[k] = _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx[k], 28)));
      } else {
        out[k] = _mm256_cvtepi32_ps(idx[k]);
      }
    }
  }
}

// scale s and offset coefficient c of row r, group g; fast says whether int8 shifted its codes
template <int KIND, bool FAST>
inline void coefs(const QWeight* w, int64_t r, int64_t g, float* s, float* c) {
  const int64_t i = r * w->scale_stride + g;
  *s = load_param(w->scales, w->scales_f16, i);
  if constexpr (KIND == INT4_ASYM) {
    *c = load_param(w->offsets, w->scales_f16, i);
  } else if constexpr (KIND == INT4_SYM) {
    *c = -8.0f * *s;
  } else if constexpr (KIND == INT8 && FAST && HLM_VNNI) {
    *c = -128.0f * *s;
  } else {
    *c = 0.0f;
  }
}


// -- a tile of 4 weight rows ---------------------------------------------------------------------
// Scales and offsets of the 4 rows come in one load from the tile copy (qmatmul.h). In fast mode
// the 4 integer dots of a block are folded into one register of 8 int32 before the float work,
// so the conversion, the scale multiply and the FMA are paid once per block for all 4 rows:
//   int4  rows 0|1 and 2|3 share a register (16 code bytes each, both lanes against the same
//         activation half), hadd -> [r0 r0 r2 r2 | r1 r1 r3 r3]
//   int8  one register per row, three hadds -> [r0 r1 r2 r3 | r0 r1 r2 r3]
// and the float accumulator has that arrangement until the end (`spread`, `fold`).

inline __m128 load4(const void* p, int f16, int64_t i) {
  if (f16) return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
  return _mm_loadu_ps(static_cast<const float*>(p) + i);
}

// [s0 s1 s2 s3] in the lane order of the dots of KIND
template <int KIND>
inline __m256 spread(__m128 s4) {
  if constexpr (KIND == INT8) {
    return _mm256_set_m128(s4, s4);
  } else {
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s4), _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3));
  }
}

// the accumulator in that lane order -> [r0 r1 r2 r3]
template <int KIND>
inline __m128 fold(__m256 v) {
  if constexpr (KIND == INT8) {
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  } else {
    const __m256 h = _mm256_hadd_ps(v, v);  // [r0 r2 r0 r2 | r1 r3 r1 r3]
    return _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  }
}

// int4: codes of two rows' blocks, one per lane -> low nibbles (inputs 0-15), high (16-31)
inline void unpack_pair(const uint8_t* a, const uint8_t* b, __m256i* lo, __m256i* hi) {
  const __m256i v = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1);
  const __m256i mask = _mm256_set1_epi8(0x0F);
  *lo = _mm256_and_si256(v, mask);
  *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
}

// int4: both rows of a pair against one activation block (xlo, xhi: its halves in both lanes)
inline __m256i pair_dot(__m256i lo, __m256i hi, __m256i xlo, __m256i xhi) {
#if HLM_VNNI
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xlo), hi, xhi);
#else
  // nibble * int8 pair sums are at most 2 * 15 * 127 = 3810: two of them still fit int16
  const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
  return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
#endif
}

// The 4 rows of a tile are contiguous, and a tile has as many 64-byte lines of codes as blocks (two
// per block for int8): during block b, line b of the tile PREFETCH_TILES ahead is requested, so the
// next tiles stream in while this one computes (measured: 1.4x on the layers, 2.3x on an int8 LM
// head, one thread of a Zen 3; the hardware prefetcher alone lags on 4 interleaved short rows).
template <int KIND>
inline void prefetch_ahead(const uint8_t* tile, int64_t code_stride, int64_t b) {
  const char* ahead = reinterpret_cast<const char*>(tile + PREFETCH_TILES * 4 * code_stride);
  for (int64_t l = 0; l < bytes_per_block(KIND) / 16; ++l) {
    _mm_prefetch(ahead + (b * bytes_per_block(KIND) / 16 + l) * 64, _MM_HINT_T0);
  }
}

template <int KIND, int RA>
void tile4_fast(const QWeight* w, const QActs* a, int64_t t, int64_t m0) {
  const int64_t K = w->K, nb = K / BLOCK, ng = K / w->G, per = w->G / BLOCK;
  constexpr int64_t P = KIND == INT4_ASYM ? 2 : 1;
  const uint8_t* rows[4];
  for (int r = 0; r < 4; ++r) rows[r] = w->codes + (4 * t + r) * w->code_stride;
  __m256 acc[RA];
  __m128 csum[RA];
  for (int i = 0; i < RA; ++i) acc[i] = _mm256_setzero_ps(), csum[i] = _mm_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t at = (t * ng + g) * P * 4;
    const __m128 s4 = load4(w->tiles, w->scales_f16, at);
    __m128 c4;
    if constexpr (KIND == INT4_ASYM) {
      c4 = load4(w->tiles, w->scales_f16, at + 4);
    } else if constexpr (KIND == INT4_SYM) {
      c4 = _mm_mul_ps(s4, _mm_set1_ps(-8.0f));
    } else if constexpr (HLM_VNNI) {  // int8 codes shifted by +128 (see block_dot)
      c4 = _mm_mul_ps(s4, _mm_set1_ps(-128.0f));
    } else {
      c4 = _mm_setzero_ps();
    }
    const __m256 sv = spread<KIND>(s4);
    for (int64_t b = g * per; b < (g + 1) * per; ++b) {
      prefetch_ahead<KIND>(rows[0], w->code_stride, b);
      __m256i dots[RA];
      if constexpr (KIND == INT8) {
        const int8_t* xb[RA];
        for (int i = 0; i < RA; ++i) xb[i] = a->xq + (m0 + i) * K + b * BLOCK;
        __m256i d[RA][4];
        for (int r = 0; r < 4; ++r) {
          for (int i = 0; i < RA; ++i) {
            d[i][r] = block_dot<INT8>(rows[r] + b * BLOCK,
                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb[i])));
          }
        }
        for (int i = 0; i < RA; ++i) {
          dots[i] = _mm256_hadd_epi32(_mm256_hadd_epi32(d[i][0], d[i][1]), _mm256_hadd_epi32(d[i][2], d[i][3]));
        }
      } else {
        __m256i xlo[RA], xhi[RA];
        for (int i = 0; i < RA; ++i) {
          const int8_t* xb = a->xq + (m0 + i) * K + b * BLOCK;
          xlo[i] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb)));
          xhi[i] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + 16)));
        }
        __m256i lo01, hi01, lo23, hi23;
        unpack_pair(rows[0] + b * 16, rows[1] + b * 16, &lo01, &hi01);
        unpack_pair(rows[2] + b * 16, rows[3] + b * 16, &lo23, &hi23);
        for (int i = 0; i < RA; ++i) {
          dots[i] = _mm256_hadd_epi32(pair_dot(lo01, hi01, xlo[i], xhi[i]), pair_dot(lo23, hi23, xlo[i], xhi[i]));
        }
      }
      for (int i = 0; i < RA; ++i) {
        const __m256 scale = _mm256_mul_ps(sv, _mm256_set1_ps(a->dx[(m0 + i) * nb + b]));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[i]), scale, acc[i]);
      }
    }
    for (int i = 0; i < RA; ++i) csum[i] = _mm_fmadd_ps(c4, _mm_set1_ps(a->gsum[(m0 + i) * ng + g]), csum[i]);
  }
  const __m128 bias = a->bias ? _mm_loadu_ps(a->bias + 4 * t) : _mm_setzero_ps();
  for (int i = 0; i < RA; ++i) {
    const __m128 y = _mm_add_ps(_mm_add_ps(fold<KIND>(acc[i]), csum[i]), bias);
    _mm_storeu_ps(a->y + (m0 + i) * a->y_stride + 4 * t, y);
  }
}

template <int KIND, int RA>
void tile4_exact(const QWeight* w, const QActs* a, int64_t t, int64_t m0) {
  const int64_t ng = w->K / w->G, per = w->G / BLOCK;
  constexpr int64_t P = KIND == INT4_ASYM ? 2 : 1;
  const uint8_t* rows[4];
  __m256 lut_lo[4], lut_hi[4], acc[4][RA];
  __m128 csum[RA];
  for (int r = 0; r < 4; ++r) {
    rows[r] = w->codes + (4 * t + r) * w->code_stride;
    for (int i = 0; i < RA; ++i) acc[r][i] = _mm256_setzero_ps();
    if constexpr (KIND == LUT4) {
      const float* l = w->lut + (w->lut_per_row ? (4 * t + r) * 16 : 0);
      lut_lo[r] = _mm256_loadu_ps(l), lut_hi[r] = _mm256_loadu_ps(l + 8);
    } else {
      lut_lo[r] = lut_hi[r] = _mm256_setzero_ps();
    }
  }
  for (int i = 0; i < RA; ++i) csum[i] = _mm_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t at = (t * ng + g) * P * 4;
    const __m128 s4 = load4(w->tiles, w->scales_f16, at);
    __m128 c4;
    if constexpr (KIND == INT4_ASYM) {
      c4 = load4(w->tiles, w->scales_f16, at + 4);
    } else if constexpr (KIND == INT4_SYM) {
      c4 = _mm_mul_ps(s4, _mm_set1_ps(-8.0f));
    } else {
      c4 = _mm_setzero_ps();
    }
    alignas(16) float s[4];
    _mm_store_ps(s, s4);
    __m256 part[4][RA];
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < RA; ++i) part[r][i] = _mm256_setzero_ps();
    for (int64_t b = g * per; b < (g + 1) * per; ++b) {
      prefetch_ahead<KIND>(rows[0], w->code_stride, b);
      for (int r = 0; r < 4; ++r) {
        __m256 q[4];
        block_floats<KIND>(rows[r] + b * bytes_per_block(KIND), lut_lo[r], lut_hi[r], q);
        for (int i = 0; i < RA; ++i) {
          const float* x = a->x + (m0 + i) * a->x_stride + b * BLOCK;
          for (int k = 0; k < 4; ++k) part[r][i] = _mm256_fmadd_ps(q[k], _mm256_loadu_ps(x + 8 * k), part[r][i]);
        }
      }
    }
    for (int i = 0; i < RA; ++i) {
      for (int r = 0; r < 4; ++r) acc[r][i] = _mm256_fmadd_ps(part[r][i], _mm256_set1_ps(s[r]), acc[r][i]);
      csum[i] = _mm_fmadd_ps(c4, _mm_set1_ps(a->gsum[(m0 + i) * ng + g]), csum[i]);
    }
  }
  const __m128 bias = a->bias ? _mm_loadu_ps(a->bias + 4 * t) : _mm_setzero_ps();
  for (int i = 0; i < RA; ++i) {
    const __m128 sums = _mm_setr_ps(hsum(acc[0][i]), hsum(acc[1][i]), hsum(acc[2][i]), hsum(acc[3][i]));
    _mm_storeu_ps(a->y + (m0 + i) * a->y_stride + 4 * t, _mm_add_ps(_mm_add_ps(sums, csum[i]), bias));
  }
}

// -- single rows (the N % 4 rows after the last tile), from the row-major scales ------------------------
// one tile: weight rows r0..r0+RW, activation rows m0..m0+RA
template <int KIND, int RW, int RA>
void tile_fast(const QWeight* w, const QActs* a, int64_t r0, int64_t m0) {
  const int64_t K = w->K, nb = K / BLOCK, ng = K / w->G, per = w->G / BLOCK;
  __m256 acc[RW][RA];
  float csum[RW][RA];
  const uint8_t* rows[RW];
  for (int r = 0; r < RW; ++r) {
    rows[r] = w->codes + (r0 + r) * w->code_stride;
    for (int i = 0; i < RA; ++i) acc[r][i] = _mm256_setzero_ps(), csum[r][i] = 0.0f;
  }
  for (int64_t g = 0; g < ng; ++g) {
    float s[RW], c[RW];
    for (int r = 0; r < RW; ++r) coefs<KIND, true>(w, r0 + r, g, &s[r], &c[r]);
    for (int64_t b = g * per; b < (g + 1) * per; ++b) {
      __m256i xq[RA];
      float dx[RA];
      for (int i = 0; i < RA; ++i) {
        xq[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a->xq + (m0 + i) * K + b * BLOCK));
        dx[i] = a->dx[(m0 + i) * nb + b];
      }
      for (int r = 0; r < RW; ++r) {
        const uint8_t* p = rows[r] + b * bytes_per_block(KIND);
        for (int i = 0; i < RA; ++i) {
          const __m256 d = _mm256_cvtepi32_ps(block_dot<KIND>(p, xq[i]));
          acc[r][i] = _mm256_fmadd_ps(d, _mm256_set1_ps(s[r] * dx[i]), acc[r][i]);
        }
      }
    }
    for (int i = 0; i < RA; ++i) {
      const float S = a->gsum[(m0 + i) * ng + g];
      for (int r = 0; r < RW; ++r) csum[r][i] += c[r] * S;
    }
  }
  for (int i = 0; i < RA; ++i) {
    for (int r = 0; r < RW; ++r) {
      a->y[(m0 + i) * a->y_stride + r0 + r] = hsum(acc[r][i]) + csum[r][i] + (a->bias ? a->bias[r0 + r] : 0.0f);
    }
  }
}

template <int KIND, int RW, int RA>
void tile_exact(const QWeight* w, const QActs* a, int64_t r0, int64_t m0) {
  const int64_t ng = w->K / w->G, per = w->G / BLOCK;
  __m256 acc[RW][RA];
  float csum[RW][RA];
  const uint8_t* rows[RW];
  __m256 lut_lo[RW], lut_hi[RW];
  for (int r = 0; r < RW; ++r) {
    rows[r] = w->codes + (r0 + r) * w->code_stride;
    for (int i = 0; i < RA; ++i) acc[r][i] = _mm256_setzero_ps(), csum[r][i] = 0.0f;
    if constexpr (KIND == LUT4) {
      const float* t = w->lut + (w->lut_per_row ? (r0 + r) * 16 : 0);
      lut_lo[r] = _mm256_loadu_ps(t), lut_hi[r] = _mm256_loadu_ps(t + 8);
    } else {
      lut_lo[r] = lut_hi[r] = _mm256_setzero_ps();
    }
  }
  for (int64_t g = 0; g < ng; ++g) {
    float s[RW], c[RW];
    for (int r = 0; r < RW; ++r) coefs<KIND, false>(w, r0 + r, g, &s[r], &c[r]);
    __m256 t[RW][RA];
    for (int r = 0; r < RW; ++r)
      for (int i = 0; i < RA; ++i) t[r][i] = _mm256_setzero_ps();
    for (int64_t b = g * per; b < (g + 1) * per; ++b) {
      for (int r = 0; r < RW; ++r) {
        __m256 q[4];
        block_floats<KIND>(rows[r] + b * bytes_per_block(KIND), lut_lo[r], lut_hi[r], q);
        for (int i = 0; i < RA; ++i) {
          const float* x = a->x + (m0 + i) * a->x_stride + b * BLOCK;
          for (int k = 0; k < 4; ++k) t[r][i] = _mm256_fmadd_ps(q[k], _mm256_loadu_ps(x + 8 * k), t[r][i]);
        }
      }
    }
    for (int i = 0; i < RA; ++i) {
      const float S = a->gsum[(m0 + i) * ng + g];
      for (int r = 0; r < RW; ++r) {
        acc[r][i] = _mm256_fmadd_ps(t[r][i], _mm256_set1_ps(s[r]), acc[r][i]);
        csum[r][i] += c[r] * S;
      }
    }
  }
  for (int i = 0; i < RA; ++i) {
    for (int r = 0; r < RW; ++r) {
      a->y[(m0 + i) * a->y_stride + r0 + r] = hsum(acc[r][i]) + csum[r][i] + (a->bias ? a->bias[r0 + r] : 0.0f);
    }
  }
}

template <int KIND, bool FAST, int RA>
inline void tile4(const QWeight* w, const QActs* a, int64_t t, int64_t m0) {
  if constexpr (FAST) {
    tile4_fast<KIND, RA>(w, a, t, m0);
  } else {
    tile4_exact<KIND, RA>(w, a, t, m0);
  }
}

// rows n0..n1 (n0 a multiple of 4): tiles of 4 weight rows x pairs of activation rows, then the
// rows after the last full tile one by one
template <int KIND, bool FAST>
void rows_of(const QWeight* w, const QActs* a, int64_t n0, int64_t n1) {
  int64_t r = n0;
  for (; r + 4 <= n1; r += 4) {
    int64_t m = 0;
    for (; m + 2 <= a->M; m += 2) tile4<KIND, FAST, 2>(w, a, r / 4, m);
    if (m < a->M) tile4<KIND, FAST, 1>(w, a, r / 4, m);
  }
  for (; r < n1; ++r) {
    for (int64_t m = 0; m < a->M; ++m) {
      if constexpr (FAST) {
        tile_fast<KIND, 1, 1>(w, a, r, m);
      } else {
        tile_exact<KIND, 1, 1>(w, a, r, m);
      }
    }
  }
}

template <bool FAST>
void matmul(const QWeight* w, const QActs* a, int64_t n0, int64_t n1) {
  if (w->fmt == FMT_INT8) {
    rows_of<INT8, FAST>(w, a, n0, n1);
  } else if (w->fmt == FMT_INT4 && w->offsets) {
    rows_of<INT4_ASYM, FAST>(w, a, n0, n1);
  } else if (w->fmt == FMT_INT4) {
    rows_of<INT4_SYM, FAST>(w, a, n0, n1);
  } else if constexpr (!FAST) {  // lut4 has no integer form: the caller runs it exact
    rows_of<LUT4, false>(w, a, n0, n1);
  }
}

void matmul_fast(const QWeight* w, const QActs* a, int64_t n0, int64_t n1) { matmul<true>(w, a, n0, n1); }
void matmul_exact(const QWeight* w, const QActs* a, int64_t n0, int64_t n1) { matmul<false>(w, a, n0, n1); }

// Q8 quantization of the activations, per block: d = max|x| / 127, q = round-half-even(x / d),
// the group sums S(g) = sum_b d_b * sum(q_b) in block order (the portable unit's order)
void prepare_fast(const float* x, int64_t x_stride, int64_t m0, int64_t m1, int64_t K, int64_t G, int8_t* xq,
                  float* dx, float* gsum) {
  const int64_t nb = K / BLOCK, ng = K / G, per = G / BLOCK;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t m = m0; m < m1; ++m) {
    for (int64_t g = 0; g < ng; ++g) {
      float acc = 0.0f;
      for (int64_t b = g * per; b < (g + 1) * per; ++b) {
        const float* v = x + m * x_stride + b * BLOCK;
        __m256 f[4];
        __m256 amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
          f[k] = _mm256_loadu_ps(v + 8 * k);
          amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, f[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float d = _mm_cvtss_f32(m4) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) {
          const __m256 r = _mm256_round_ps(_mm256_mul_ps(f[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          q[k] = _mm256_cvtps_epi32(r);
        }
        const int32_t isum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        // packs work within 128-bit lanes; the permute puts the 8 groups of 4 back in order
        const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), order);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + m * K + b * BLOCK), p8);
        dx[m * nb + b] = d;
        acc += d * static_cast<float>(isum);
      }
      gsum[m * ng + g] = acc;
    }
  }
}

void prepare_exact(const float* x, int64_t x_stride, int64_t m0, int64_t m1, int64_t K, int64_t G, float* gsum) {
  const int64_t ng = K / G;
  for (int64_t m = m0; m < m1; ++m) {
    for (int64_t g = 0; g < ng; ++g) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t j = g * G; j < (g + 1) * G; j += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + m * x_stride + j));
      gsum[m * ng + g] = hsum(acc);
    }
  }
}

// as dequantize_ref (nn/quant/formats.py): s * (q - 8), s * q + m (a multiply, then an add),
// s * q, s * lut[q]; bit for bit the same floats (the units are built without FMA contraction)
template <int KIND>
void dequantize_rows(const QWeight* w, int64_t n0, int64_t n1, float* out) {
  const int64_t ng = w->K / w->G, per = w->G / BLOCK;
  for (int64_t r = n0; r < n1; ++r) {
    const uint8_t* row = w->codes + r * w->code_stride;
    __m256 lut_lo = _mm256_setzero_ps(), lut_hi = lut_lo;
    if constexpr (KIND == LUT4) {
      const float* t = w->lut + (w->lut_per_row ? r * 16 : 0);
      lut_lo = _mm256_loadu_ps(t), lut_hi = _mm256_loadu_ps(t + 8);
    }
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t i = r * w->scale_stride + g;
      const __m256 s = _mm256_set1_ps(load_param(w->scales, w->scales_f16, i));
      const __m256 m = _mm256_set1_ps(KIND == INT4_ASYM ? load_param(w->offsets, w->scales_f16, i) : 0.0f);
      for (int64_t b = g * per; b < (g + 1) * per; ++b) {
        __m256 q[4];
        block_floats<KIND>(row + b * bytes_per_block(KIND), lut_lo, lut_hi, q);
        float* o = out + (r - n0) * w->K + b * BLOCK;
        for (int k = 0; k < 4; ++k) {
          __m256 v;
          if constexpr (KIND == INT4_SYM) {
            v = _mm256_mul_ps(s, _mm256_sub_ps(q[k], _mm256_set1_ps(8.0f)));
          } else if constexpr (KIND == INT4_ASYM) {
            v = _mm256_add_ps(_mm256_mul_ps(s, q[k]), m);
          } else {
            v = _mm256_mul_ps(s, q[k]);
          }
          _mm256_storeu_ps(o + 8 * k, v);
        }
      }
    }
  }
}

void dequantize(const QWeight* w, int64_t n0, int64_t n1, float* out) {
  if (w->fmt == FMT_INT8) {
    dequantize_rows<INT8>(w, n0, n1, out);
  } else if (w->fmt == FMT_LUT4) {
    dequantize_rows<LUT4>(w, n0, n1, out);
  } else if (w->offsets) {
    dequantize_rows<INT4_ASYM>(w, n0, n1, out);
  } else {
    dequantize_rows<INT4_SYM>(w, n0, n1, out);
  }
}

}  // namespace
}  // namespace hlm
