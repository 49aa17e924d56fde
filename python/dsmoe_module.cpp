// dsmoe_module.cpp: the Python module `dsmoe` (pybind11): Model (forward, generate, config) and
// Tokenizer (encode, decode, apply_chat_template). Compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/generate.h"
#include "util/check.h"
#include "util/threads.h"

namespace py = pybind11;

namespace dsmoe::python {
namespace {

// config.json as Python's json module reads it (every field the file has, in its own types).
py::object read_config_dict(const std::string& path) {
  std::filesystem::path file = path;
  if (std::filesystem::is_directory(file)) file /= "config.json";
  std::ifstream in(file);
  DSMOE_CHECK(in.good(), "{}: cannot open", file.string());
  std::stringstream text;
  text << in.rdbuf();
  return py::module_::import("json").attr("loads")(text.str());
}

class PyModel {
 public:
  PyModel(const std::string& path, const std::string& weights, std::optional<int> threads)
      : model_(load(path, weights, threads)), config_dict_(read_config_dict(path)) {}

  // ids: int64 [B, T] -> float32 logits [B, T, V].
  py::array_t<float> forward(
      const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids) const {
    DSMOE_CHECK(ids.ndim() == 2,
                "forward: ids must be a 2-D int64 array [batch, tokens], got {} "
                "dimensions",
                ids.ndim());
    const int64_t n_seqs = ids.shape(0), n_tokens = ids.shape(1);
    DSMOE_CHECK(n_seqs > 0 && n_tokens > 0, "forward: ids is empty ({} x {})", n_seqs, n_tokens);
    const int64_t vocab_size = model_.config().vocab_size;
    std::vector<int64_t> copy(ids.data(), ids.data() + n_seqs * n_tokens);
    Tensor logits;
    {
      py::gil_scoped_release release;
      logits = model_.forward(copy.data(), n_seqs, n_tokens);
    }
    py::array_t<float> out(std::vector<py::ssize_t>{n_seqs, n_tokens, vocab_size});
    std::copy(logits.data, logits.data + logits.numel(), out.mutable_data());
    return out;
  }

  // Returns the new tokens only (not the prompt).
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt_ids, int64_t max_new_tokens,
                                float temperature, uint64_t seed, float top_p, int64_t top_k,
                                bool stop_at_eos) const {
    GenerateOptions options;
    options.max_new_tokens = max_new_tokens;
    options.sampling.temperature = temperature;
    options.sampling.seed = seed;
    options.sampling.top_p = top_p;
    options.sampling.top_k = top_k;
    options.stop_at_eos = stop_at_eos;
    std::vector<int64_t> tokens;
    {
      py::gil_scoped_release release;
      tokens = dsmoe::generate(model_, prompt_ids, options);
    }
    return {tokens.begin() + static_cast<std::ptrdiff_t>(prompt_ids.size()), tokens.end()};
  }

  const py::object& config() const { return config_dict_; }

 private:
  static Model load(const std::string& path, const std::string& weights,
                    std::optional<int> threads) {
    const std::optional<WeightFormat> format = parse_weight_format(weights);
    DSMOE_CHECK(format.has_value(), "weights must be f32, bf16, q8_0 or q4_0, got '{}'", weights);
    if (threads.has_value()) set_num_threads(*threads);
    py::gil_scoped_release release;
    return Model::load(path, *format);
  }

  Model model_;  // loaded first: its errors name what is wrong with the checkpoint
  py::object config_dict_;
};

}  // namespace
}  // namespace dsmoe::python

PYBIND11_MODULE(dsmoe, m) {
  using dsmoe::python::PyModel;
  m.doc() = "dsmoe: inference for DeepSeekMoE-family models (V1, V2, V3)";
  py::register_exception<dsmoe::Error>(m, "Error", PyExc_ValueError);
  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string&, const std::string&, std::optional<int>>(), py::arg("path"),
           py::arg("weights") = "f32", py::arg("threads") = py::none(),
           "Load a checkpoint directory (config.json + safetensors); weights: f32, bf16, q8_0, "
           "q4_0")
      .def("forward", &PyModel::forward, py::arg("ids"),
           "ids: int64 array [batch, tokens] -> float32 logits [batch, tokens, vocab]")
      .def("generate", &PyModel::generate, py::arg("prompt_ids"), py::arg("max_new_tokens"),
           py::arg("temperature") = 0.0f, py::arg("seed") = 0, py::arg("top_p") = 1.0f,
           py::arg("top_k") = 0, py::arg("stop_at_eos") = false,
           "Decode with the KV cache; returns the new token ids (temperature 0: greedy)")
      .def_property_readonly("config", &PyModel::config, "config.json as a dict");
}
