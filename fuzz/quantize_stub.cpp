// quantize_stub.cpp: the quantizing functions that src/model/weights.cpp links against, for the
// fuzz build only. Loading quantized weights (load_weights with --weights bf16|q8_0|q4_0|fp8) is
// never reached by fuzz_trainer_state, and the real ones stand on the Highway kernels, which
// clang 14 does not compile (gemm_bf16.cpp's AVX-512 intrinsics need GCC's target handling).
#include "kernels/quant.h"
#include "model/quantize.h"
#include "util/check.h"

namespace dsmoe {
namespace {

[[noreturn]] void not_in_the_fuzz_build(const char* function) {
  throw Error(fmt::format("{}: quantized weights are not part of the fuzz build", function));
}

}  // namespace

bool is_quantizable(const ModelConfig&, const std::string&, const Shape&, TensorRole) {
  not_in_the_fuzz_build("is_quantizable");
}
void quantize_tensor(Tensor&, WeightFormat, bool) { not_in_the_fuzz_build("quantize_tensor"); }
bool product_panels(WeightFormat) { not_in_the_fuzz_build("product_panels"); }
QuantMatrix make_quant_matrix(int64_t, int64_t, WeightFormat, bool) {
  not_in_the_fuzz_build("make_quant_matrix");
}
void quantize_rows(const float*, int64_t, int64_t, QuantMatrix&) {
  not_in_the_fuzz_build("quantize_rows");
}
int64_t fp8_first_nan(const uint8_t*, int64_t) { not_in_the_fuzz_build("fp8_first_nan"); }

}  // namespace dsmoe
