// The quantized linear as torch ops, and the one place the instruction set is chosen.
//
//   hybridlm::qlinear(x, codes, scales, offsets?, lut?, bias?, fmt, group_size, act) -> y
//       y = x W^T + b for W in a format of nn/quant/formats.py; act "exact" or "fast" (qmatmul.h)
//   hybridlm::qdequantize(codes, scales, offsets?, lut?, fmt, group_size) -> W float32 (N, K)
//   hybridlm::qscale_tiles(scales, offsets?) -> the scales regrouped for tiles of 4 rows (qmatmul.h)
//
// qlinear takes the tiles as an argument (`tiles?`): a module makes them once when it is built;
// without them they are made for this call only.
//
// Fewer activation rows than `gemm_rows` (decode, batched decode) run the kernels of qmatmul.h:
// activations prepared once, output rows split in chunks over threads (threadpool.cpp). From
// `gemm_rows` rows on (prefill), the weight is dequantized into float32 tiles and multiplied by
// torch's GEMM: there the work is arithmetic, and a tuned float GEMM does it best (and exactly, in
// both modes). The fake (meta) implementations are in qmatmul.py.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string_view>
#include <vector>

#include "qmatmul.h"
#include "qmatmul_ops.h"
#include "threadpool.h"

namespace hlm {
namespace {

constexpr int64_t BLOCK = 32;

// -- instruction set --------------------------------------------------------------------------------
// The one function that decides which kernels run: the best this CPU (and its OS) supports, no
// better than `ceiling` ("" for no limit). Chosen at load and again only when tests or an entry
// point lower it (hlm_qmatmul_set_isa).
const KernelTable* select_isa(std::string_view ceiling) {
  const std::string_view order[] = {"avx512_vnni", "avx2", "portable"};
  bool allowed = ceiling.empty();
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool vnni = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#else
  const bool avx2 = false, vnni = false;
#endif
  for (std::string_view name : order) {
    allowed = allowed || name == ceiling;
    if (!allowed) continue;
    if (name == "avx512_vnni" && vnni) return kernels_avx512();
    if (name == "avx2" && avx2) return kernels_avx2();
    if (name == "portable") return kernels_portable();
  }
  return nullptr;  // an unknown ceiling
}

std::atomic<const KernelTable*> g_kernels{nullptr};
std::atomic<int64_t> g_gemm_rows{32};

// -- arguments ------------------------------------------------------------------------------------
int parse_format(std::string_view fmt) {
  if (fmt == "int4") return FMT_INT4;
  if (fmt == "int8") return FMT_INT8;
  if (fmt == "lut4") return FMT_LUT4;
  TORCH_CHECK(false, "hybridlm::qlinear: no native kernel for format '", std::string(fmt), "' (int4, int8, lut4)");
}

// A plain copy loop on the calling thread, not at:: ops: a model has a hundred of these at load,
// and small OpenMP copies stall whenever another process holds a core.
at::Tensor scale_tiles(const at::Tensor& scales, const std::optional<at::Tensor>& offsets) {
  TORCH_CHECK(scales.dim() == 2 && scales.is_contiguous() && scales.device().is_cpu() &&
                  (scales.scalar_type() == at::kHalf || scales.scalar_type() == at::kFloat),
              "hybridlm::qscale_tiles: scales must be contiguous float16/float32 (N, groups) on the CPU");
  TORCH_CHECK(!offsets.has_value() || (offsets->sizes() == scales.sizes() && offsets->is_contiguous() &&
                                       offsets->scalar_type() == scales.scalar_type()),
              "hybridlm::qscale_tiles: offsets must be contiguous, with the scales' shape and dtype");
  const int64_t T = scales.size(0) / 4, ng = scales.size(1), P = offsets.has_value() ? 2 : 1;
  at::Tensor out = at::empty({T, ng, P, 4}, scales.options());
  const int64_t width = scales.element_size();
  const auto* src0 = static_cast<const char*>(scales.data_ptr());
  const auto* src1 = offsets.has_value() ? static_cast<const char*>(offsets->data_ptr()) : nullptr;
  auto* dst = static_cast<char*>(out.data_ptr());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t j = 0; j < 4; ++j)
          std::memcpy(dst + (((t * ng + g) * P + p) * 4 + j) * width,
                      (p ? src1 : src0) + ((4 * t + j) * ng + g) * width, width);
  return out;
}

}  // namespace

const KernelTable* kernels() {
  const KernelTable* k = g_kernels.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = select_isa("");
    g_kernels.store(k, std::memory_order_release);
  }
  return k;
}

QWeight weight_of(const at::Tensor& codes, const at::Tensor& scales, const std::optional<at::Tensor>& offsets,
                  const std::optional<at::Tensor>& lut, std::string_view fmt, int64_t group_size) {
  QWeight w{};
  w.fmt = parse_format(fmt);
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous() && codes.device().is_cpu(),
              "hybridlm::qlinear: codes must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(codes.scalar_type() == (w.fmt == FMT_INT8 ? at::kChar : at::kByte),
              "hybridlm::qlinear: ", std::string(fmt), " codes have the wrong dtype ", codes.scalar_type());
  w.N = codes.size(0);
  w.K = w.fmt == FMT_INT8 ? codes.size(1) : 2 * codes.size(1);
  w.G = group_size;
  TORCH_CHECK(w.G > 0 && w.G % BLOCK == 0 && w.K % w.G == 0,
              "hybridlm::qlinear: group size ", w.G, " must be a multiple of 32 that divides ", w.K);
  const auto sdt = scales.scalar_type();
  TORCH_CHECK((sdt == at::kHalf || sdt == at::kFloat) && scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == w.N && scales.size(1) == w.K / w.G,
              "hybridlm::qlinear: scales must be contiguous float16/float32 (N, K / group_size)");
  w.codes = static_cast<const uint8_t*>(codes.data_ptr());
  w.code_stride = codes.size(1);
  w.scales = scales.data_ptr();
  w.scale_stride = scales.size(1);
  w.scales_f16 = sdt == at::kHalf;
  if (offsets.has_value()) {
    TORCH_CHECK(w.fmt == FMT_INT4, "hybridlm::qlinear: only int4 has offsets");
    TORCH_CHECK(offsets->scalar_type() == sdt && offsets->sizes() == scales.sizes() && offsets->is_contiguous(),
                "hybridlm::qlinear: offsets must be contiguous with the scales' dtype and shape");
    w.offsets = offsets->data_ptr();
  }
  if (w.fmt == FMT_LUT4) {
    TORCH_CHECK(lut.has_value() && lut->scalar_type() == at::kFloat && lut->is_contiguous() &&
                    (lut->sizes() == at::IntArrayRef{16} || lut->sizes() == at::IntArrayRef{w.N, 16}),
                "hybridlm::qlinear: lut4 needs a contiguous float32 lut of shape (16,) or (N, 16)");
    w.lut = lut->data_ptr<float>();
    w.lut_per_row = lut->dim() == 2;
  }
  return w;
}

namespace {

// per-thread scratch: the quantized activations, their scales and sums, the dequantized tiles
template <typename T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
thread_local std::vector<int8_t> t_xq;
thread_local std::vector<float> t_dx, t_gsum, t_tile;

// -- the kernel path (few rows) ---------------------------------------------------------------------
struct MatmulJob {
  const KernelTable* k;
  const QWeight* w;
  const QActs* a;
  bool fast;
  int64_t rows_per_chunk;
};

void matmul_chunk(void* ctx, int64_t i) {
  const auto* job = static_cast<const MatmulJob*>(ctx);
  const int64_t n0 = i * job->rows_per_chunk, n1 = std::min(job->w->N, n0 + job->rows_per_chunk);
  (job->fast ? job->k->matmul_fast : job->k->matmul_exact)(job->w, job->a, n0, n1);
}

// Chunks of a multiple of 4 rows holding ~32 KB of codes each (a few us of work: the claim costs
// well under that), and at least 4 per thread when the matrix allows, for balance.
int64_t rows_per_chunk(const QWeight& w, int64_t M, int threads) {
  const int64_t row_bytes = w.code_stride * std::max<int64_t>(M, 1);
  int64_t rows = std::max<int64_t>(4, (32768 / std::max<int64_t>(row_bytes, 1)) & ~int64_t{3});
  const int64_t balanced = ((w.N + 4 * threads - 1) / (4 * threads) + 3) & ~int64_t{3};
  return std::max<int64_t>(4, std::min(rows, balanced));
}

}  // namespace

void run_prepared(const KernelTable* k, const QWeight& w, const QActs& a, bool fast) {
  const int threads = at::get_num_threads();
  MatmulJob job{k, &w, &a, fast, rows_per_chunk(w, a.M, threads)};
  parallel_chunks((w.N + job.rows_per_chunk - 1) / job.rows_per_chunk, threads, matmul_chunk, &job);
}

namespace {

void run_kernels(const KernelTable* k, const QWeight& w, const at::Tensor& x2, const std::optional<at::Tensor>& bias,
                 bool fast, at::Tensor& out) {
  const int64_t M = x2.size(0), K = w.K, ng = K / w.G;
  QActs a{};
  a.M = M;
  a.x = x2.data_ptr<float>();
  a.x_stride = x2.stride(0);
  a.gsum = scratch(t_gsum, M * ng);
  if (fast) {
    a.xq = scratch(t_xq, M * K);
    a.dx = scratch(t_dx, M * (K / BLOCK));
    k->prepare_fast(a.x, a.x_stride, 0, M, K, w.G, const_cast<int8_t*>(a.xq), const_cast<float*>(a.dx),
                    const_cast<float*>(a.gsum));
  } else {
    k->prepare_exact(a.x, a.x_stride, 0, M, K, w.G, const_cast<float*>(a.gsum));
  }
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  a.y = out.data_ptr<float>();
  a.y_stride = out.stride(0);
  run_prepared(k, w, a, fast);
}

// -- the GEMM path (many rows) ----------------------------------------------------------------------
struct DequantJob {
  const KernelTable* k;
  const QWeight* w;
  int64_t n0, n1, rows_per_chunk;
  float* out;
};

void dequant_chunk(void* ctx, int64_t i) {
  const auto* job = static_cast<const DequantJob*>(ctx);
  const int64_t r0 = job->n0 + i * job->rows_per_chunk, r1 = std::min(job->n1, r0 + job->rows_per_chunk);
  job->k->dequantize(job->w, r0, r1, job->out + (r0 - job->n0) * job->w->K);
}

void dequantize_rows(const KernelTable* k, const QWeight& w, int64_t n0, int64_t n1, float* out) {
  const int64_t chunk = std::max<int64_t>(1, 16384 / w.K);
  DequantJob job{k, &w, n0, n1, chunk, out};
  parallel_chunks((n1 - n0 + chunk - 1) / chunk, at::get_num_threads(), dequant_chunk, &job);
}

void run_gemm(const KernelTable* k, const QWeight& w, const at::Tensor& x2, const std::optional<at::Tensor>& bias,
              at::Tensor& out) {
  // tiles of at most 4M weights (16 MB of float32): the whole matrix for most layers, a few
  // tiles for an LM head, never a float copy of a large matrix
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(w.N, (int64_t{1} << 22) / w.K));
  float* buf = scratch(t_tile, static_cast<size_t>(tile * w.K));
  for (int64_t n0 = 0; n0 < w.N; n0 += tile) {
    const int64_t n1 = std::min(w.N, n0 + tile);
    dequantize_rows(k, w, n0, n1, buf);
    const at::Tensor wt = at::from_blob(buf, {n1 - n0, w.K}, at::TensorOptions().dtype(at::kFloat));
    at::Tensor dst = out.narrow(1, n0, n1 - n0);
    if (bias.has_value()) {
      at::addmm_out(dst, bias->narrow(0, n0, n1 - n0), x2, wt.t());
    } else {
      at::mm_out(dst, x2, wt.t());
    }
  }
}

// -- the ops --------------------------------------------------------------------------------------
at::Tensor qlinear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                   const std::optional<at::Tensor>& offsets, const std::optional<at::Tensor>& lut,
                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& tiles,
                   c10::string_view fmt, int64_t group_size, c10::string_view act) {
  QWeight w = weight_of(codes, scales, offsets, lut, std::string_view(fmt.data(), fmt.size()), group_size);
  const at::Tensor tiled = tiles.has_value() ? *tiles : scale_tiles(scales, offsets);
  TORCH_CHECK(tiled.scalar_type() == scales.scalar_type() && tiled.is_contiguous() &&
                  tiled.sizes() == at::IntArrayRef({w.N / 4, w.K / w.G, offsets.has_value() ? 2 : 1, 4}),
              "hybridlm::qlinear: tiles must be qscale_tiles(scales, offsets)");
  w.tiles = tiled.data_ptr();
  const std::string_view mode(act.data(), act.size());
  TORCH_CHECK(mode == "exact" || mode == "fast", "hybridlm::qlinear: act must be 'exact' or 'fast'");
  TORCH_CHECK(x.device().is_cpu() && x.size(-1) == w.K, "hybridlm::qlinear: x must be a CPU tensor (..., ", w.K, ")");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "hybridlm::qlinear: x must be float32, bfloat16 or float16");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == w.N,
                "hybridlm::qlinear: bias must be contiguous float32 (N,)");
  }
  at::Tensor x2 = x.reshape({-1, w.K}).to(at::kFloat);
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t M = x2.size(0);
  at::Tensor out = at::empty({M, w.N}, x2.options());
  const KernelTable* k = kernels();
  if (M >= g_gemm_rows.load(std::memory_order_relaxed)) {
    run_gemm(k, w, x2, bias, out);
  } else if (M > 0) {
    // lut4 has no integer form: it runs exact in both modes
    run_kernels(k, w, x2, bias, mode == "fast" && w.fmt != FMT_LUT4, out);
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.N;
  return out.view(shape).to(x.scalar_type());
}

at::Tensor qdequantize(const at::Tensor& codes, const at::Tensor& scales, const std::optional<at::Tensor>& offsets,
                       const std::optional<at::Tensor>& lut, c10::string_view fmt, int64_t group_size) {
  const QWeight w = weight_of(codes, scales, offsets, lut, std::string_view(fmt.data(), fmt.size()), group_size);
  at::Tensor out = at::empty({w.N, w.K}, codes.options().dtype(at::kFloat));
  if (w.N > 0) dequantize_rows(kernels(), w, 0, w.N, out.data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace hlm

// Plain C entry points for the Python side (ctypes): which kernels run, and the GEMM threshold.
extern "C" {

// Lower (or restore, with "") the instruction set; returns the one now in use, "" if unknown.
const char* hlm_qmatmul_set_isa(const char* ceiling) {
  const hlm::KernelTable* k = hlm::select_isa(ceiling ? ceiling : "");
  if (k == nullptr) return "";
  hlm::g_kernels.store(k, std::memory_order_release);
  return k->name;
}

const char* hlm_qmatmul_isa() { return hlm::kernels()->name; }

// Activation rows from which qlinear dequantizes into a float GEMM instead of running the kernels.
void hlm_qmatmul_set_gemm_rows(int64_t rows) { hlm::g_gemm_rows.store(std::max<int64_t>(rows, 1)); }

int64_t hlm_qmatmul_gemm_rows() { return hlm::g_gemm_rows.load(); }
}

TORCH_LIBRARY_FRAGMENT(hybridlm, m) {
  m.def("qlinear(Tensor x, Tensor codes, Tensor scales, Tensor? offsets, Tensor? lut, Tensor? bias, Tensor? tiles, "
        "str fmt, int group_size, str act) -> Tensor");
  m.def("qscale_tiles(Tensor scales, Tensor? offsets) -> Tensor");
  m.def("qdequantize(Tensor codes, Tensor scales, Tensor? offsets, Tensor? lut, str fmt, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(hybridlm, CPU, m) {
  m.impl("qlinear", &hlm::qlinear);
  m.impl("qdequantize", &hlm::qdequantize);
  m.impl("qscale_tiles", &hlm::scale_tiles);
}
