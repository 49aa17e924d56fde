// threads.h: one place that sets how many threads every parallel region (OpenMP, BLAS) uses.
#pragma once

namespace dsmoe {

// n <= 0 keeps the library defaults (all cores).
void set_num_threads(int n);
int num_threads();

}  // namespace dsmoe
