// Quantized matmul y = x W^T + b over hybridlm's quantized weight formats (nn/quant/formats.py):
// the plain data the kernels take, and one table of kernels per instruction set.
//
// No torch, no std templates here: each ISA translation unit includes this file and is compiled for
// its own instruction set, so nothing inline may be shared between them (an inline function
// emitted by the AVX-512 unit could be picked by the linker for everyone).
//
// Weight layout, row r of N, K inputs, groups of G inputs (G a multiple of 32):
//
//   codes   int4/lut4: K/2 bytes; every run of 32 inputs is 16 bytes, byte j = x[j] | x[j+16] << 4
//           int8:      K bytes, int8
//   scales  (N, K/G) float16 or float32        offsets (int4 asymmetric only): like scales
//   tiles   the scales (and offsets) again, regrouped for tiles of 4 rows, in the scales' dtype:
//           (N / 4, K / G, P, 4) with P = 2 (scales, offsets) or 1 (scales); row 4t + j, group g
//           at [t, g, 0, j] (and its offset at [t, g, 1, j]): one load gives a tile's 4 scales.
//           Rows past the last full tile (N % 4) are read from `scales` and `offsets`.
//   value   int4 sym  s * (q - 8)   int4 asym  s * q + m   int8  s * q   lut4  s * lut[q]
//
// Every kernel computes, per output row r, with g the group of 32-input block b:
//
//   y[r] = sum_g s[r,g] * sum_{b in g} D(r, b)  +  sum_g c[r,g] * S(g)  +  bias[r]
//
//   exact mode  D = sum_j q_j x_j over the block in float32 (lut4: lut[q_j] x_j), S(g) = sum of x
//               over the group: the float32 product of the dequantized weight, summed in another order
//   fast mode   x is first quantized per block of 32 (llama.cpp's Q8): xq = round(x / dx), dx =
//               max|x| / 127; D = dx[b] * (integer dot of q and xq), S(g) = sum_b dx[b] sum(xq_b)
//   c = m (int4 asym), -8 s (int4 sym: s (q - 8) = s q - 8 s), 0 (int8, lut4)

#pragma once

#include <stdint.h>

namespace hlm {

enum Format : int { FMT_INT4 = 0, FMT_INT8 = 1, FMT_LUT4 = 2 };

struct QWeight {
  int fmt;                 // Format
  const uint8_t* codes;    // (N, code_stride) bytes
  int64_t code_stride;     // bytes between rows
  const void* scales;      // (N, K / G): uint16_t float16 bits or float
  const void* offsets;     // like scales, or nullptr
  int64_t scale_stride;    // elements between rows of scales (and offsets)
  const void* tiles;       // (N / 4, K / G, P, 4) like scales; see the layout above
  int scales_f16;          // 1: scales and offsets are float16 bits, 0: float32
  const float* lut;        // lut4: 16 floats, or 16 per row when lut_per_row
  int lut_per_row;
  int64_t N, K, G;
};

// Activations prepared once per matmul for M rows of K inputs.
struct QActs {
  int64_t M;
  const float* x;          // exact mode: (M, x_stride)
  int64_t x_stride;
  const int8_t* xq;        // fast mode: (M, K) codes
  const float* dx;         // fast mode: (M, K / 32) block scales
  const float* gsum;       // (M, K / G): S(g) above, for the mode in use
  const float* bias;       // (N,) or nullptr
  float* y;                // (M, y_stride)
  int64_t y_stride;
};

struct KernelTable {
  const char* name;  // "avx512_vnni", "avx2", "portable"
  // rows m0..m1 of x -> xq, dx and gsum (fast) for groups of G
  void (*prepare_fast)(const float* x, int64_t x_stride, int64_t m0, int64_t m1, int64_t K, int64_t G,
                       int8_t* xq, float* dx, float* gsum);
  // rows m0..m1 of x -> gsum (exact)
  void (*prepare_exact)(const float* x, int64_t x_stride, int64_t m0, int64_t m1, int64_t K, int64_t G,
                        float* gsum);
  // output rows n0..n1 (n0 a multiple of 4) for all M activation rows
  void (*matmul_fast)(const QWeight* w, const QActs* a, int64_t n0, int64_t n1);
  void (*matmul_exact)(const QWeight* w, const QActs* a, int64_t n0, int64_t n1);
  // rows n0..n1 of the weight, dequantized into out (n1 - n0, K) float32 (the formulas above)
  void (*dequantize)(const QWeight* w, int64_t n0, int64_t n1, float* out);
  // the float math of a decode step besides the matmuls (decode_math.h)
  // one part of a decode step's attention: G query heads q (G, D) sharing one K/V head, over S
  // cached positions (rows `stride` floats apart): m[g] = max score, l[g] = sum_s e^(score - m[g]),
  // out (G, D) = sum_s e^(score - m[g]) v_s, not normalised (the caller merges the parts of a
  // sequence split between threads, as flash-decoding does). scores: G * S floats of scratch.
  // attend_f16: the same over a float16 cache (K/V as IEEE half bits).
  void (*attend)(const float* q, int64_t G, const float* k, const float* v, int64_t S, int64_t D, int64_t stride,
                 float scale, float* scores, float* out, float* m, float* l);
  void (*attend_f16)(const float* q, int64_t G, const uint16_t* k, const uint16_t* v, int64_t S, int64_t D,
                     int64_t stride, float scale, float* scores, float* out, float* m, float* l);
  void (*silu_mul)(const float* gate, const float* up, int64_t n, float* out);
};

// nullptr where this build or this CPU cannot run them; the caller checks the CPU first
const KernelTable* kernels_portable();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();

}  // namespace hlm
