// The quantized matmul kernels for AVX-512 VNNI (qmatmul_x86.h with HLM_VNNI = 1): the AVX2 unit
// with its integer dots done by one dpbusd on 256-bit registers (AVX512-VL). Needs avx512f, vl, bw
// and vnni; the caller checks the CPU (qmatmul_ops.cpp, select_isa) before using this table.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "qmatmul.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#define HLM_VNNI 1
#include "qmatmul_x86.h"
#include "decode_math.h"
#include "decode_math_x86.h"
#pragma GCC pop_options

namespace hlm {
namespace {
const KernelTable TABLE = {"avx512_vnni", prepare_fast, prepare_exact, matmul_fast, matmul_exact, dequantize,
                           attend_x86<float>, attend_x86<uint16_t>, silu_mul};
}
const KernelTable* kernels_avx512() { return &TABLE; }
}  // namespace hlm
