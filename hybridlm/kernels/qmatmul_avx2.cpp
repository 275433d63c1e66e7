// The quantized matmul kernels for AVX2 + FMA + F16C (qmatmul_x86.h with HLM_VNNI = 0).
// Every header is included before the target pragma, so only this unit's own code is AVX2.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "qmatmul.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define HLM_VNNI 0
#include "qmatmul_x86.h"
#include "decode_math.h"
#include "decode_math_x86.h"
#pragma GCC pop_options

namespace hlm {
namespace {
const KernelTable TABLE = {"avx2", prepare_fast, prepare_exact, matmul_fast, matmul_exact, dequantize,
                           attend_x86<float>, attend_x86<uint16_t>, silu_mul};
}
const KernelTable* kernels_avx2() { return &TABLE; }
}  // namespace hlm
