// retort/util/parallel.h — parallel loops for the torch-free runtime (OpenMP), with libtorch's
// at::parallel_for semantics: [begin, end) is cut into at most one contiguous chunk per thread, each at
// least `grain` long; f(chunk_begin, chunk_end) runs once per chunk; a call from inside a parallel region
// runs inline on the calling thread. Results must not depend on the chunking (every retort loop writes
// disjoint outputs per index).
//
// The thread count is OpenMP's (set_num_threads; libtorch's torch::set_num_threads sets the same one).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace retort {

int num_threads();
void set_num_threads(int n);  // n >= 1

template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  grain = std::max<int64_t>(grain, 1);
#ifdef _OPENMP
  const int64_t range = end - begin;
  const int64_t n = std::min<int64_t>(num_threads(), (range + grain - 1) / grain);
  if (n <= 1 || omp_in_parallel()) return f(begin, end);
  std::exception_ptr error;
#pragma omp parallel num_threads(int(n))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (range + nt - 1) / nt;
    const int64_t lo = begin + t * chunk, hi = std::min(end, lo + chunk);
    if (lo < hi) {
      try {
        f(lo, hi);
      } catch (...) {
#pragma omp critical(retort_parallel_for_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
#else
  f(begin, end);
#endif
}

}  // namespace retort
