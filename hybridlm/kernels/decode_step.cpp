// One decode step of a Llama-style decoder (batch 1, one new token) in a single native call.
//
//   torch.classes.hybridlm.DecodePlan(d_model, n_heads, n_kv_heads, head_dim, eps, inv_freq)
//     .add_linear(codes, scales, offsets?, lut?, bias?, tiles, fmt, group_size, act) -> index
//     .add_attention(norm_weight, qkv_index, out_index)     pre-norm attention block, RoPE
//     .add_mlp(norm_weight, in_index, out_index)             pre-norm SwiGLU block ([gate; up] fused)
//     .set_head(embedding, final_norm_weight, lm_head_index)
//     .step(token, pos, k_caches, v_caches) -> logits (vocab,)
//
// Why: at batch 1 the matmuls of SmolLM2-135M take a few microseconds each, and the eager model
// spends as long again around them in Python and small ATen ops (norms, RoPE, reshapes, SDPA's
// setup): hundreds of dispatches per token. Here the whole token is one call: the matmuls run the
// same kernels as `hybridlm::qlinear` (activations prepared once per matmul, rows split over the
// thread pool), and the small ops are loops over a few hundred floats (decode_math.h for the
// vectorised ones).
//
// The plan is built once from a model (kernels/decode_step.py says which models qualify); it holds
// references to the weight tensors, not copies, and scratch buffers of its own, so one plan serves
// one decoding thread at a time. K/V caches are the model's own (Cache's KVSlot tensors,
// (1, H_kv, capacity, D), float32, or float16 as llama.cpp keeps them): the step writes the new
// token's K and V at `pos` and attends over positions 0..pos. The reference is the eager Decoder on
// the same cache: tests pin the logits together.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "qmatmul.h"
#include "qmatmul_ops.h"
#include "threadpool.h"

namespace hlm {
namespace {

constexpr int64_t BLOCK = 32;

struct Linear {
  std::vector<at::Tensor> keep;  // the tensors the QWeight points into
  QWeight w;
  const float* bias;
  bool fast;  // int8 activations (fast mode); lut4 always runs exact
};

struct Block {
  bool attention;  // else a SwiGLU MLP
  at::Tensor norm;
  int64_t a, b;  // attention: qkv, out; mlp: in ([gate; up]), out
};

// The attention of one token, split into parts for the pool: each KV head's positions are cut into
// `split` ranges, and part (kv, i) runs the KV head's G query heads over range i (KernelTable::attend);
// attention() then merges the parts of each head. With SmolLM2's 3 KV heads and 2 threads, 3 parts
// would leave one thread idle a third of the time; 6 keep both busy.
struct AttendJob {
  const KernelTable* k;
  const float* q;      // (H, D): query heads of KV head kv are rows kv * G .. kv * G + G
  const void* kc;      // (H_kv, capacity, D) float32, or float16 when f16
  const void* vc;
  bool f16;
  int64_t S, D, capacity, G, split, chunk;  // chunk: positions per part (the last may be shorter)
  float scale;
  float* scores;       // (parts, G, chunk)
  float* out;          // (parts, G, D) unnormalised
  float* m;            // (parts, G)
  float* l;            // (parts, G)
};

void attend_part(void* ctx, int64_t part) {
  const auto* j = static_cast<const AttendJob*>(ctx);
  const int64_t kv = part / j->split, s0 = (part % j->split) * j->chunk;
  // never empty: chunk = ceil(S / split) and S >= split, so (split - 1) * chunk < S
  const int64_t n = std::min(j->chunk, j->S - s0);
  const int64_t off = (kv * j->capacity + s0) * j->D;
  const float* q = j->q + kv * j->G * j->D;
  float *scores = j->scores + part * j->G * j->chunk, *out = j->out + part * j->G * j->D;
  if (j->f16) {
    j->k->attend_f16(q, j->G, static_cast<const uint16_t*>(j->kc) + off, static_cast<const uint16_t*>(j->vc) + off, n,
                     j->D, j->D, j->scale, scores, out, j->m + part * j->G, j->l + part * j->G);
  } else {
    j->k->attend(q, j->G, static_cast<const float*>(j->kc) + off, static_cast<const float*>(j->vc) + off, n, j->D,
                 j->D, j->scale, scores, out, j->m + part * j->G, j->l + part * j->G);
  }
}

class DecodePlan : public torch::CustomClassHolder {
 public:
  DecodePlan(int64_t d_model, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, double eps, at::Tensor inv_freq)
      : d_(d_model), h_(n_heads), hkv_(n_kv_heads), hd_(head_dim), eps_(static_cast<float>(eps)),
        inv_freq_(inv_freq.contiguous()) {
    TORCH_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim % 2 == 0,
                "DecodePlan: heads must divide into KV heads and the head dim must be even");
    TORCH_CHECK(inv_freq_.scalar_type() == at::kFloat && inv_freq_.numel() == head_dim / 2,
                "DecodePlan: inv_freq must be float32 (head_dim / 2,)");
  }

  int64_t add_linear(at::Tensor codes, at::Tensor scales, std::optional<at::Tensor> offsets,
                     std::optional<at::Tensor> lut, std::optional<at::Tensor> bias, at::Tensor tiles, std::string fmt,
                     int64_t group_size, std::string act) {
    TORCH_CHECK(act == "exact" || act == "fast", "DecodePlan: act must be 'exact' or 'fast'");
    Linear l;
    l.w = weight_of(codes, scales, offsets, lut, fmt, group_size);
    TORCH_CHECK(tiles.is_contiguous() && tiles.scalar_type() == scales.scalar_type() &&
                    tiles.sizes() == at::IntArrayRef({l.w.N / 4, l.w.K / l.w.G, offsets.has_value() ? 2 : 1, 4}),
                "DecodePlan: tiles must be qscale_tiles(scales, offsets)");
    l.w.tiles = tiles.data_ptr();
    l.bias = nullptr;
    if (bias.has_value()) {
      TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == l.w.N,
                  "DecodePlan: bias must be contiguous float32 (N,)");
      l.bias = bias->data_ptr<float>();
      l.keep.push_back(*bias);
    }
    l.fast = act == "fast" && l.w.fmt != FMT_LUT4;
    l.keep.insert(l.keep.end(), {codes, scales, tiles});
    if (offsets.has_value()) l.keep.push_back(*offsets);
    if (lut.has_value()) l.keep.push_back(*lut);
    linears_.push_back(std::move(l));
    return static_cast<int64_t>(linears_.size()) - 1;
  }

  void add_attention(at::Tensor norm, int64_t qkv, int64_t out) {
    check_norm(norm);
    check_linear(qkv, d_, (h_ + 2 * hkv_) * hd_, "qkv");
    check_linear(out, h_ * hd_, d_, "attention output");
    blocks_.push_back({true, norm, qkv, out});
    ++n_attention_;
  }

  void add_mlp(at::Tensor norm, int64_t in, int64_t out) {
    check_norm(norm);
    const int64_t width = linear(in).w.N;
    TORCH_CHECK(width % 2 == 0, "DecodePlan: the MLP input matrix must hold [gate; up]");
    check_linear(in, d_, width, "MLP input");
    check_linear(out, width / 2, d_, "MLP output");
    blocks_.push_back({false, norm, in, out});
    d_ff_ = std::max(d_ff_, width / 2);
  }

  void set_head(at::Tensor embedding, at::Tensor final_norm, int64_t lm_head) {
    TORCH_CHECK(embedding.dim() == 2 && embedding.size(1) == d_ && embedding.scalar_type() == at::kFloat &&
                    embedding.is_contiguous(),
                "DecodePlan: the embedding must be contiguous float32 (vocab, d_model)");
    check_norm(final_norm);
    check_linear(lm_head, d_, linear(lm_head).w.N, "LM head");
    embedding_ = embedding;
    final_norm_ = final_norm;
    lm_head_ = lm_head;
  }

  at::Tensor step(int64_t token, int64_t pos, std::vector<at::Tensor> k_caches, std::vector<at::Tensor> v_caches) {
    TORCH_CHECK(lm_head_ >= 0, "DecodePlan: set_head was not called");
    TORCH_CHECK(token >= 0 && token < embedding_.size(0), "DecodePlan: token ", token, " is outside the vocabulary");
    TORCH_CHECK(static_cast<int64_t>(k_caches.size()) == n_attention_ &&
                    static_cast<int64_t>(v_caches.size()) == n_attention_,
                "DecodePlan: one K and one V cache per attention block (", n_attention_, ")");
    const auto cache_type = n_attention_ ? k_caches[0].scalar_type() : at::kFloat;
    TORCH_CHECK(cache_type == at::kFloat || cache_type == at::kHalf, "DecodePlan: caches must be float32 or float16");
    for (int64_t i = 0; i < n_attention_; ++i) {
      for (const at::Tensor* c : {&k_caches[i], &v_caches[i]}) {
        TORCH_CHECK(c->dim() == 4 && c->size(0) == 1 && c->size(1) == hkv_ && c->size(3) == hd_ &&
                        c->scalar_type() == cache_type && c->is_contiguous(),
                    "DecodePlan: caches must be contiguous, all float32 or all float16, (1, ", hkv_, ", capacity, ",
                    hd_, ")");
        TORCH_CHECK(pos >= 0 && pos < c->size(2), "DecodePlan: position ", pos, " is past the cache's capacity ",
                    c->size(2));
      }
    }
    const KernelTable* k = kernels();
    reserve();
    float* x = x_.data();
    std::memcpy(x, embedding_.data_ptr<float>() + token * d_, d_ * sizeof(float));
    rope_tables(pos);
    int64_t layer = 0;
    for (const Block& b : blocks_) {
      rms_norm(x, b.norm, h_in_.data());
      if (b.attention) {
        attention(k, b, h_in_.data(), pos, k_caches[layer], v_caches[layer]);
        ++layer;
      } else {
        mlp(k, b, h_in_.data());
      }
      for (int64_t i = 0; i < d_; ++i) x[i] += out_[i];
    }
    rms_norm(x, final_norm_, h_in_.data());
    const Linear& head = linear(lm_head_);
    at::Tensor logits = at::empty({head.w.N}, embedding_.options());
    matmul(k, head, h_in_.data(), logits.data_ptr<float>());
    return logits;
  }

 private:
  const Linear& linear(int64_t i) const {
    TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(linears_.size()), "DecodePlan: no linear ", i);
    return linears_[i];
  }

  void check_linear(int64_t i, int64_t in, int64_t out, const char* what) const {
    const QWeight& w = linear(i).w;
    TORCH_CHECK(w.K == in && w.N == out, "DecodePlan: the ", what, " matrix is (", w.N, ", ", w.K, "), expected (",
                out, ", ", in, ")");
  }

  void check_norm(const at::Tensor& norm) const {
    TORCH_CHECK(norm.dim() == 1 && norm.numel() == d_ && norm.scalar_type() == at::kFloat && norm.is_contiguous(),
                "DecodePlan: norm weights must be contiguous float32 (d_model,)");
  }

  void reserve() {
    const int64_t widest = std::max({d_, (h_ + 2 * hkv_) * hd_, 2 * d_ff_, h_ * hd_});
    for (auto* v : {&x_, &h_in_, &out_, &wide_, &act_, &gsum_, &dx_}) {
      if (static_cast<int64_t>(v->size()) < widest) v->resize(widest);
    }
    if (static_cast<int64_t>(xq_.size()) < widest) xq_.resize(widest);
  }

  // cos/sin of pos * inv_freq in float32, as rope_cos_sin computes them
  void rope_tables(int64_t pos) {
    const int64_t half = hd_ / 2;
    cos_.resize(half);
    sin_.resize(half);
    const float* f = inv_freq_.data_ptr<float>();
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * f[i];
      cos_[i] = std::cos(angle);
      sin_[i] = std::sin(angle);
    }
  }

  // rotate pairs (x_i, x_{i + D/2}) of one head (apply_rope's 'rotate half' layout)
  void rope(float* head) const {
    const int64_t half = hd_ / 2;
    for (int64_t i = 0; i < half; ++i) {
      const float a = head[i], b = head[i + half];
      head[i] = a * cos_[i] - b * sin_[i];
      head[i + half] = b * cos_[i] + a * sin_[i];
    }
  }

  void rms_norm(const float* x, const at::Tensor& weight, float* out) const {
    double sq = 0.0;
    for (int64_t i = 0; i < d_; ++i) sq += static_cast<double>(x[i]) * x[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(sq / d_) + eps_);
    const float* w = weight.data_ptr<float>();
    for (int64_t i = 0; i < d_; ++i) out[i] = x[i] * r * w[i];
  }

  // y = W x (+ bias): activations prepared once, rows over the pool
  void matmul(const KernelTable* k, const Linear& l, const float* x, float* y) {
    QActs a{};
    a.M = 1;
    a.x = x;
    a.x_stride = l.w.K;
    a.gsum = gsum_.data();
    if (l.fast) {
      a.xq = xq_.data();
      a.dx = dx_.data();
      k->prepare_fast(x, l.w.K, 0, 1, l.w.K, l.w.G, xq_.data(), dx_.data(), gsum_.data());
    } else {
      k->prepare_exact(x, l.w.K, 0, 1, l.w.K, l.w.G, gsum_.data());
    }
    a.bias = l.bias;
    a.y = y;
    a.y_stride = l.w.N;
    run_prepared(k, l.w, a, l.fast);
  }

  void attention(const KernelTable* k, const Block& b, const float* h, int64_t pos, at::Tensor& kc, at::Tensor& vc) {
    float* qkv = wide_.data();
    matmul(k, linear(b.a), h, qkv);
    for (int64_t head = 0; head < h_ + hkv_; ++head) rope(qkv + head * hd_);  // q heads, then k heads
    const int64_t capacity = kc.size(2);
    const float* knew = qkv + h_ * hd_;
    const float* vnew = knew + hkv_ * hd_;
    const bool f16 = kc.scalar_type() == at::kHalf;
    for (int64_t g = 0; g < hkv_; ++g) {
      const int64_t at_pos = (g * capacity + pos) * hd_;
      if (f16) {  // rounded to nearest even, as the eager slot's copy into its float16 storage
        at::Half* kd = kc.data_ptr<at::Half>() + at_pos;
        at::Half* vd = vc.data_ptr<at::Half>() + at_pos;
        for (int64_t d = 0; d < hd_; ++d) kd[d] = knew[g * hd_ + d], vd[d] = vnew[g * hd_ + d];
      } else {
        std::memcpy(kc.data_ptr<float>() + at_pos, knew + g * hd_, hd_ * sizeof(float));
        std::memcpy(vc.data_ptr<float>() + at_pos, vnew + g * hd_, hd_ * sizeof(float));
      }
    }
    const int64_t S = pos + 1, G = h_ / hkv_, threads = at::get_num_threads();
    // split a KV head's positions only when the parts stay long enough to be worth a task
    const int64_t split = S >= 64 * threads ? threads / std::gcd(hkv_, threads) : 1;
    const int64_t chunk = (S + split - 1) / split, parts = hkv_ * split;
    part_out_.resize(parts * G * hd_);
    part_m_.resize(parts * G);
    part_l_.resize(parts * G);
    if (static_cast<int64_t>(scores_.size()) < parts * G * chunk) scores_.resize(parts * G * chunk);
    AttendJob job{k, qkv, kc.data_ptr(), vc.data_ptr(), f16, S, hd_, capacity, G, split, chunk, 1.0f / std::sqrt(static_cast<float>(hd_)),
                  scores_.data(), part_out_.data(), part_m_.data(), part_l_.data()};
    parallel_chunks(parts, threads, attend_part, &job);
    merge_parts(split, G);
    matmul(k, linear(b.b), act_.data(), out_.data());
  }

  void mlp(const KernelTable* k, const Block& b, const float* h) {
    const Linear& in = linear(b.a);
    const int64_t ff = in.w.N / 2;
    float* gu = wide_.data();
    matmul(k, in, h, gu);
    k->silu_mul(gu, gu + ff, ff, act_.data());
    matmul(k, linear(b.b), act_.data(), out_.data());
  }

  // head h's output = sum_i e^(m_i - M) out_i / sum_i e^(m_i - M) l_i over its parts i, M = max m_i
  void merge_parts(int64_t split, int64_t G) {
    float* o = act_.data();
    for (int64_t h = 0; h < h_; ++h) {
      const int64_t kv = h / G, g = h % G;
      float top = -3.0e38f;
      for (int64_t i = 0; i < split; ++i) top = std::max(top, part_m_[(kv * split + i) * G + g]);
      float total = 0.0f;
      for (int64_t d = 0; d < hd_; ++d) o[h * hd_ + d] = 0.0f;
      for (int64_t i = 0; i < split; ++i) {
        const int64_t p = (kv * split + i) * G + g;
        const float w = std::exp(part_m_[p] - top);
        total += w * part_l_[p];
        for (int64_t d = 0; d < hd_; ++d) o[h * hd_ + d] += w * part_out_[p * hd_ + d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < hd_; ++d) o[h * hd_ + d] *= inv;
    }
  }

  int64_t d_, h_, hkv_, hd_, d_ff_ = 0, n_attention_ = 0, lm_head_ = -1;
  float eps_;
  at::Tensor inv_freq_, embedding_, final_norm_;
  std::vector<Linear> linears_;
  std::vector<Block> blocks_;
  // scratch, sized by reserve(): the residual stream, the block input, a block's output, the
  // widest matmul output, the attention output or SwiGLU product, prepared activations, scores
  std::vector<float> x_, h_in_, out_, wide_, act_, gsum_, dx_, scores_, cos_, sin_;
  std::vector<float> part_out_, part_m_, part_l_;  // attention parts before merge_parts
  std::vector<int8_t> xq_;
};

}  // namespace
}  // namespace hlm

TORCH_LIBRARY_FRAGMENT(hybridlm, m) {
  m.class_<hlm::DecodePlan>("DecodePlan")
      .def(torch::init<int64_t, int64_t, int64_t, int64_t, double, at::Tensor>())
      .def("add_linear", &hlm::DecodePlan::add_linear)
      .def("add_attention", &hlm::DecodePlan::add_attention)
      .def("add_mlp", &hlm::DecodePlan::add_mlp)
      .def("set_head", &hlm::DecodePlan::set_head)
      .def("step", &hlm::DecodePlan::step);
}
