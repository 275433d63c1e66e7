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
// one decoding thread at a time. K/V caches are the model's own (Cache's KVSlot
// tensors, (1, H_kv, capacity, D) float32): the step writes the new token's K and V at `pos` and
// attends over positions 0..pos. The reference is the eager Decoder on the same cache: tests pin
// the logits together.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cmath>
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

struct AttendJob {
  const KernelTable* k;
  const float* q;      // (H, D)
  const float* kc;     // (H_kv, capacity, D)
  const float* vc;
  int64_t S, D, capacity, group;  // group: query heads per KV head
  float scale;
  float* scores;       // (H, S)
  float* out;          // (H, D)
};

void attend_chunk(void* ctx, int64_t h) {
  const auto* j = static_cast<const AttendJob*>(ctx);
  const int64_t kv = h / j->group;
  j->k->attend_head(j->q + h * j->D, j->kc + kv * j->capacity * j->D, j->vc + kv * j->capacity * j->D, j->S, j->D,
                    j->D, j->scale, j->scores + h * j->S, j->out + h * j->D);
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
    for (int64_t i = 0; i < n_attention_; ++i) {
      for (const at::Tensor* c : {&k_caches[i], &v_caches[i]}) {
        TORCH_CHECK(c->dim() == 4 && c->size(0) == 1 && c->size(1) == hkv_ && c->size(3) == hd_ &&
                        c->scalar_type() == at::kFloat && c->is_contiguous(),
                    "DecodePlan: caches must be contiguous float32 (1, ", hkv_, ", capacity, ", hd_, ")");
        TORCH_CHECK(pos >= 0 && pos < c->size(2), "DecodePlan: position ", pos, " is past the cache's capacity ",
                    c->size(2));
      }
    }
    const KernelTable* k = kernels();
    reserve(pos + 1);
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

  void reserve(int64_t S) {
    const int64_t widest = std::max({d_, (h_ + 2 * hkv_) * hd_, 2 * d_ff_, h_ * hd_});
    for (auto* v : {&x_, &h_in_, &out_, &wide_, &act_, &gsum_, &dx_}) {
      if (static_cast<int64_t>(v->size()) < widest) v->resize(widest);
    }
    if (static_cast<int64_t>(xq_.size()) < widest) xq_.resize(widest);
    if (static_cast<int64_t>(scores_.size()) < h_ * S) scores_.resize(h_ * S);
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
    float* kd = kc.data_ptr<float>();
    float* vd = vc.data_ptr<float>();
    const float* knew = qkv + h_ * hd_;
    const float* vnew = knew + hkv_ * hd_;
    for (int64_t g = 0; g < hkv_; ++g) {
      std::memcpy(kd + (g * capacity + pos) * hd_, knew + g * hd_, hd_ * sizeof(float));
      std::memcpy(vd + (g * capacity + pos) * hd_, vnew + g * hd_, hd_ * sizeof(float));
    }
    AttendJob job{k, qkv, kd, vd, pos + 1, hd_, capacity, h_ / hkv_,
                  1.0f / std::sqrt(static_cast<float>(hd_)), scores_.data(), act_.data()};
    parallel_chunks(h_, at::get_num_threads(), attend_chunk, &job);
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

  int64_t d_, h_, hkv_, hd_, d_ff_ = 0, n_attention_ = 0, lm_head_ = -1;
  float eps_;
  at::Tensor inv_freq_, embedding_, final_norm_;
  std::vector<Linear> linears_;
  std::vector<Block> blocks_;
  // scratch, sized by reserve(): the residual stream, the block input, a block's output, the
  // widest matmul output, the attention output or SwiGLU product, prepared activations, scores
  std::vector<float> x_, h_in_, out_, wide_, act_, gsum_, dx_, scores_, cos_, sin_;
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
