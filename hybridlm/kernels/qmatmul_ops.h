// What qmatmul_ops.cpp shares with the other torch-side unit of its library (decode_step.cpp):
// the kernels chosen for this CPU, a weight read from its tensors, and the threaded matmul.

#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "qmatmul.h"

namespace hlm {

// the kernel table in use (the best this CPU runs, unless lowered: select_isa)
const KernelTable* kernels();

// a weight of nn/quant/formats.py from its tensors, checked; `tiles` is left for the caller
QWeight weight_of(const at::Tensor& codes, const at::Tensor& scales, const std::optional<at::Tensor>& offsets,
                  const std::optional<at::Tensor>& lut, std::string_view fmt, int64_t group_size);

// y rows of `a` = x W^T (+ bias) from activations already prepared for `fast` or exact mode,
// output rows split in chunks over at::get_num_threads() threads
void run_prepared(const KernelTable* k, const QWeight& w, const QActs& a, bool fast);

}  // namespace hlm
