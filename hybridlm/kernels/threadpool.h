// A small pool for splitting one matmul over the CPU's threads; see threadpool.cpp for why it is
// not OpenMP. Plain C++ (no torch), so the ISA units and the op unit can share it.

#pragma once

#include <stdint.h>

namespace hlm {

// Runs fn(ctx, i) for every i in [0, n), on the calling thread and up to threads - 1 workers;
// returns when all n have run. Chunks are claimed one at a time, so whoever is running takes the
// next one. Not reentrant: fn must not call parallel_chunks.
void parallel_chunks(int64_t n, int threads, void (*fn)(void*, int64_t), void* ctx);

}  // namespace hlm
