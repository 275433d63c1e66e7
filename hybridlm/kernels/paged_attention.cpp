// Paged attention for one query token per sequence (decoding), reading K/V straight from the
// engine's block pools: no per-step copy of the cache.
//
// Pool layout (one pool per attention layer; hybridlm/engine/paged_cache.py):
//
//   k_pool, v_pool: (R, H_kv, D) float32, R = n_blocks * block_size token rows
//   row of position p of sequence n = block_tables[n][p / block_size] * block_size + p % block_size
//
//   block_tables (N, M) int32: each sequence's blocks in order (unused entries anything)
//   ctx_lens (N,) int32: keys each query sees, positions [max(0, len - window), len)
//
// out[n, h] = softmax_s(q[n, h] . k[s, h / rep] * scale) v[s, h / rep]  (Vaswani et al. 2017, eq. 1),
// rep = H / H_kv query heads per KV head (GQA). One job per (sequence, KV head): its `rep` query
// heads read each key and value row once, in two passes (scores, then the weighted sum of values),
// walking the sequence block by block. Jobs are split over threads by threadpool.cpp, and only
// when there is enough KV to read for waking a second thread to pay.
//
// ISA: the job function is cloned for AVX2 and the baseline (GCC's target_clones), the loader
// picks the clone the CPU runs; the dot products keep 8 explicit partial sums (the lanes of a GCC
// vector type, which each clone lowers to its registers) so no reduction is reassociated.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "threadpool.h"

namespace {

constexpr int64_t kParallelBytes = 4 << 20;  // below ~4 MB of K/V a second thread costs more than it saves

struct Job {
  const float *Q, *K, *V;
  const int32_t *BT, *L;
  float* O;
  int64_t H, D, Hkv, M, rep, block_size, window;
  float scale;
};

// FP traps are never enabled here; without this GCC will not turn the loops' compares into
// vector selects (a compare could trap), and leaves them scalar.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

// 8 floats as one GCC vector: each clone lowers it to its ISA (one ymm for AVX2, two xmm for the
// baseline), so the inner loops are vectorised by construction, not left to the auto-vectoriser
// (which left the dot product scalar: the op ran ~8x below a float matmul's FLOP rate). aligned(4):
// rows are float-aligned only; may_alias: it reads float arrays.
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));

// The 8 lanes are the 8 partial sums; always inlined, as GCC does not inline a function compiled
// with other `optimize` options into the clones.
[[gnu::always_inline]] inline float dot(const float* a, const float* b, int64_t D) {
  v8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) acc += *reinterpret_cast<const v8*>(a + d) * *reinterpret_cast<const v8*>(b + d);
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

// o += w * v over D floats
[[gnu::always_inline]] inline void axpy(float* o, float w, const float* v, int64_t D) {
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) *reinterpret_cast<v8*>(o + d) += w * *reinterpret_cast<const v8*>(v + d);
  for (; d < D; ++d) o[d] += w * v[d];
}

// exp(x) for x <= 0 (softmax after subtracting the max), written so the compiler vectorises it:
// exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by its degree-6 Taylor
// polynomial (relative error ~2e-7, float32's own rounding). Measured: std::exp, one call per
// score, was ~20% of the op's time.
inline void exp_inplace(float* x, int64_t n) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] > -87.0f ? x[i] : -87.0f;  // below, exp underflows float32 anyway
    const float k = (v * kLog2e + 12582912.0f) - 12582912.0f;  // round to nearest: + 1.5 * 2^23
    const float r = (v - k * kLn2Hi) - k * kLn2Lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k, k in [-126, 0]
    x[i] = p * __builtin_bit_cast(float, bits);
  }
}

__attribute__((target_clones("avx2", "default"))) void run_job(void* ctx, int64_t job) {
  const Job& j = *static_cast<const Job*>(ctx);
  const int64_t n = job / j.Hkv, g = job % j.Hkv, D = j.D, Hkv = j.Hkv, bs = j.block_size;
  const int64_t len = j.L[n];
  const int64_t first = j.window > 0 ? std::max<int64_t>(0, len - j.window) : 0;
  const int64_t S = len - first;
  const float* q0 = j.Q + (n * j.H + g * j.rep) * D;
  float* o0 = j.O + (n * j.H + g * j.rep) * D;
  std::fill(o0, o0 + j.rep * D, 0.0f);
  if (S <= 0) return;
  thread_local std::vector<float> scores;
  scores.assign(j.rep * S, 0.0f);
  // row of position t in block b = BT[b] * bs + (t - b * bs): `base` folds the block's offset in
  for (int64_t b = first / bs; b * bs < len; ++b) {  // pass 1: scaled scores q . k
    const int64_t t0 = std::max(first, b * bs), t1 = std::min(len, (b + 1) * bs);
    const float* base = j.K + (static_cast<int64_t>(j.BT[n * j.M + b]) * bs - b * bs) * Hkv * D + g * D;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t r = 0; r < j.rep; ++r) scores[r * S + (t - first)] = dot(q0 + r * D, base + t * Hkv * D, D) * j.scale;
  }
  for (int64_t r = 0; r < j.rep; ++r) {  // softmax, max-subtracted for stability
    float* sr = scores.data() + r * S;
    const float mx = *std::max_element(sr, sr + S);
    for (int64_t s = 0; s < S; ++s) sr[s] -= mx;
    exp_inplace(sr, S);
    float total = 0.0f;
    for (int64_t s = 0; s < S; ++s) total += sr[s];
    const float inv = 1.0f / total;
    for (int64_t s = 0; s < S; ++s) sr[s] *= inv;
  }
  for (int64_t b = first / bs; b * bs < len; ++b) {  // pass 2: weighted sum of values
    const int64_t t0 = std::max(first, b * bs), t1 = std::min(len, (b + 1) * bs);
    const float* base = j.V + (static_cast<int64_t>(j.BT[n * j.M + b]) * bs - b * bs) * Hkv * D + g * D;
    for (int64_t t = t0; t < t1; ++t) {
      const float* v = base + t * Hkv * D;
      for (int64_t r = 0; r < j.rep; ++r) {
        const float w = scores[r * S + (t - first)];
        axpy(o0 + r * D, w, v, D);
      }
    }
  }
}

#pragma GCC pop_options

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                  const at::Tensor& block_tables, const at::Tensor& ctx_lens,
                                  int64_t block_size, int64_t window, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3 && v_pool.sizes() == k_pool.sizes(),
              "paged_decode_attention: q (N, H, D), k_pool and v_pool (R, H_kv, D)");
  TORCH_CHECK(q.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(),
              "paged_decode_attention: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_pool.scalar_type() == at::kFloat &&
                  v_pool.scalar_type() == at::kFloat,
              "paged_decode_attention: float32 only");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && ctx_lens.scalar_type() == at::kInt,
              "paged_decode_attention: block_tables and ctx_lens are int32");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(), "paged_decode_attention: pools must be contiguous");
  const int64_t N = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_pool.size(1);
  TORCH_CHECK(k_pool.size(2) == D && H % Hkv == 0, "paged_decode_attention: head shapes disagree");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == N && ctx_lens.size(0) == N,
              "paged_decode_attention: one block table and length per query");
  TORCH_CHECK(block_size > 0, "paged_decode_attention: block_size must be positive");
  const at::Tensor qc = q.contiguous(), bt = block_tables.contiguous(), lens = ctx_lens.contiguous();
  at::Tensor out = at::empty({N, H, D}, q.options());
  const int64_t M = bt.size(1), R = k_pool.size(0);
  const int32_t* BT = bt.data_ptr<int32_t>();
  const int32_t* L = lens.data_ptr<int32_t>();
  int64_t rows = 0;
  for (int64_t n = 0; n < N; ++n) {  // every block a query reads must lie in the pool
    TORCH_CHECK(L[n] >= 0 && (L[n] == 0 || (L[n] - 1) / block_size < M),
                "paged_decode_attention: context longer than the block table");
    for (int64_t b = 0; b * block_size < L[n]; ++b)
      TORCH_CHECK(BT[n * M + b] >= 0 && (static_cast<int64_t>(BT[n * M + b]) + 1) * block_size <= R,
                  "paged_decode_attention: block id outside the pool");
    rows += L[n];
  }
  Job job{qc.data_ptr<float>(), k_pool.data_ptr<float>(), v_pool.data_ptr<float>(), BT, L,
          out.data_ptr<float>(), H, D, Hkv, M, H / Hkv, block_size, window, static_cast<float>(scale)};
  const int threads = rows * Hkv * D * 8 >= kParallelBytes ? at::get_num_threads() : 1;
  hlm::parallel_chunks(N * Hkv, threads, run_job, &job);
  return out;
}

}  // namespace

// a fragment: other kernel files add their own ops to the same hybridlm namespace
TORCH_LIBRARY_FRAGMENT(hybridlm, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_tables, Tensor ctx_lens, "
        "int block_size, int window, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(hybridlm, CPU, m) { m.impl("paged_decode_attention", &paged_decode_attention); }
