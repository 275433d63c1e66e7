// Quantized matmul in plain C++ (any CPU): the same arithmetic as the SIMD units, one row and one
// value at a time. Layout and formulas: qmatmul.h. Compiled with the baseline instruction set only.

#include <math.h>
#include <string.h>

#include "decode_math.h"
#include "qmatmul.h"

namespace hlm {
namespace {

constexpr int64_t BLOCK = 32;

float load_param(const void* p, int f16, int64_t i) {
  return f16 ? f16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}

// code of input j (0..31) of the 32-input run starting at byte p
inline int code4(const uint8_t* p, int j) { return j < 16 ? (p[j] & 0x0F) : (p[j - 16] >> 4); }

// s, c of row r, group g (qmatmul.h: y = s * D + c * S)
void group_coefs(const QWeight* w, int64_t r, int64_t g, float* s, float* c) {
  const int64_t i = r * w->scale_stride + g;
  *s = load_param(w->scales, w->scales_f16, i);
  if (w->fmt == FMT_INT4) {
    *c = w->offsets ? load_param(w->offsets, w->scales_f16, i) : -8.0f * *s;
  } else {
    *c = 0.0f;
  }
}

void prepare_fast(const float* x, int64_t x_stride, int64_t m0, int64_t m1, int64_t K, int64_t G, int8_t* xq,
                  float* dx, float* gsum) {
  const int64_t nb = K / BLOCK, ng = K / G, per = G / BLOCK;
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * x_stride;
    for (int64_t g = 0; g < ng; ++g) {
      float acc = 0.0f;
      for (int64_t b = g * per; b < (g + 1) * per; ++b) {
        const float* v = xr + b * BLOCK;
        float amax = 0.0f;
        for (int j = 0; j < BLOCK; ++j) amax = fmaxf(amax, fabsf(v[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t isum = 0;
        int8_t* q = xq + m * K + b * BLOCK;
        for (int j = 0; j < BLOCK; ++j) {
          q[j] = static_cast<int8_t>(nearbyintf(v[j] * id));  // round half to even, as the SIMD units
          isum += q[j];
        }
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
      float acc = 0.0f;
      for (int64_t j = g * G; j < (g + 1) * G; ++j) acc += x[m * x_stride + j];
      gsum[m * ng + g] = acc;
    }
  }
}

// block b of row r: the integer dot with the quantized activations (fast) ...
int32_t dot_fast(const QWeight* w, const uint8_t* row, int64_t b, const int8_t* xq) {
  int32_t acc = 0;
  if (w->fmt == FMT_INT8) {
    const int8_t* q = reinterpret_cast<const int8_t*>(row) + b * BLOCK;
    for (int j = 0; j < BLOCK; ++j) acc += q[j] * xq[j];
  } else {
    const uint8_t* p = row + b * BLOCK / 2;
    for (int j = 0; j < BLOCK; ++j) acc += code4(p, j) * xq[j];
  }
  return acc;
}

// ... and the float32 dot with the activations (exact)
float dot_exact(const QWeight* w, const uint8_t* row, const float* lut, int64_t b, const float* x) {
  float acc = 0.0f;
  if (w->fmt == FMT_INT8) {
    const int8_t* q = reinterpret_cast<const int8_t*>(row) + b * BLOCK;
    for (int j = 0; j < BLOCK; ++j) acc += static_cast<float>(q[j]) * x[j];
  } else {
    const uint8_t* p = row + b * BLOCK / 2;
    for (int j = 0; j < BLOCK; ++j) {
      const int q = code4(p, j);
      acc += (w->fmt == FMT_LUT4 ? lut[q] : static_cast<float>(q)) * x[j];
    }
  }
  return acc;
}

void matmul(const QWeight* w, const QActs* a, int64_t n0, int64_t n1, bool fast) {
  const int64_t nb = w->K / BLOCK, ng = w->K / w->G, per = w->G / BLOCK;
  for (int64_t r = n0; r < n1; ++r) {
    const uint8_t* row = w->codes + r * w->code_stride;
    const float* lut = w->lut ? w->lut + (w->lut_per_row ? r * 16 : 0) : nullptr;
    for (int64_t m = 0; m < a->M; ++m) {
      float acc = 0.0f, csum = 0.0f;
      for (int64_t g = 0; g < ng; ++g) {
        float s, c;
        group_coefs(w, r, g, &s, &c);
        float t = 0.0f;
        for (int64_t b = g * per; b < (g + 1) * per; ++b) {
          if (fast) {
            t += static_cast<float>(dot_fast(w, row, b, a->xq + m * w->K + b * BLOCK)) * a->dx[m * nb + b];
          } else {
            t += dot_exact(w, row, lut, b, a->x + m * a->x_stride + b * BLOCK);
          }
        }
        acc += s * t;
        csum += c * a->gsum[m * ng + g];
      }
      a->y[m * a->y_stride + r] = acc + csum + (a->bias ? a->bias[r] : 0.0f);
    }
  }
}

void matmul_fast(const QWeight* w, const QActs* a, int64_t n0, int64_t n1) { matmul(w, a, n0, n1, true); }
void matmul_exact(const QWeight* w, const QActs* a, int64_t n0, int64_t n1) { matmul(w, a, n0, n1, false); }

// written as dequantize_ref in nn/quant/formats.py (a multiply, then an add: bit for bit the same)
void dequantize(const QWeight* w, int64_t n0, int64_t n1, float* out) {
  const int64_t ng = w->K / w->G;
  for (int64_t r = n0; r < n1; ++r) {
    const uint8_t* row = w->codes + r * w->code_stride;
    const float* lut = w->lut ? w->lut + (w->lut_per_row ? r * 16 : 0) : nullptr;
    float* o = out + (r - n0) * w->K;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t i = r * w->scale_stride + g;
      const float s = load_param(w->scales, w->scales_f16, i);
      const float m = w->offsets ? load_param(w->offsets, w->scales_f16, i) : 0.0f;
      for (int64_t j = g * w->G; j < (g + 1) * w->G; ++j) {
        if (w->fmt == FMT_INT8) {
          o[j] = s * static_cast<float>(reinterpret_cast<const int8_t*>(row)[j]);
          continue;
        }
        const int q = code4(row + (j / BLOCK) * (BLOCK / 2), static_cast<int>(j % BLOCK));
        if (w->fmt == FMT_LUT4) {
          o[j] = s * lut[q];
        } else if (w->offsets) {
          o[j] = s * static_cast<float>(q) + m;
        } else {
          o[j] = s * static_cast<float>(q - 8);
        }
      }
    }
  }
}

const KernelTable TABLE = {"portable", prepare_fast, prepare_exact, matmul_fast, matmul_exact, dequantize,
                           attend_plain<float>, attend_plain<uint16_t>, silu_mul};

}  // namespace

const KernelTable* kernels_portable() { return &TABLE; }

}  // namespace hlm
