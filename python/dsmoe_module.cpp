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
#include "text/chat_template.h"
#include "text/tokenizer.h"
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

// A checkpoint's tokenizer.json and chat template.
class PyTokenizer {
 public:
  explicit PyTokenizer(const std::string& path) : tokenizer_(text::Tokenizer::load(path)) {
    if (!tokenizer_.chat_template().empty()) chat_template_.emplace(tokenizer_.chat_template());
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens) const {
    py::gil_scoped_release release;
    return tokenizer_.encode(text, add_special_tokens);
  }

  // Invalid UTF-8 (ids that cut a character) becomes U+FFFD, as transformers' decode does.
  py::str decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
    const std::string bytes = tokenizer_.decode(ids, skip_special_tokens);
    return py::reinterpret_steal<py::str>(
        PyUnicode_DecodeUTF8(bytes.data(), static_cast<py::ssize_t>(bytes.size()), "replace"));
  }

  // messages: a list of dicts, rendered with the template's variables (and bos/eos tokens);
  // tokenize=True returns the ids (the template writes BOS itself).
  py::object apply_chat_template(const py::list& messages, bool add_generation_prompt,
                                 bool tokenize, const py::object& tools) const {
    DSMOE_CHECK(chat_template_.has_value(), "{}: tokenizer_config.json has no chat_template",
                tokenizer_.dir());
    const py::module_ json = py::module_::import("json");
    nlohmann::ordered_json context = {
        {"messages",
         nlohmann::ordered_json::parse(json.attr("dumps")(messages).cast<std::string>())},
        {"add_generation_prompt", add_generation_prompt},
        {"bos_token", tokenizer_.bos_token()},
        {"eos_token", tokenizer_.eos_token()}};
    if (!tools.is_none())
      context["tools"] =
          nlohmann::ordered_json::parse(json.attr("dumps")(tools).cast<std::string>());
    std::string rendered;
    {
      py::gil_scoped_release release;
      rendered = chat_template_->render(context);
    }
    if (tokenize) return py::cast(encode(rendered, false));
    return py::str(rendered);
  }

  const text::Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  text::Tokenizer tokenizer_;
  std::optional<text::ChatTemplate> chat_template_;
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
  using dsmoe::python::PyTokenizer;
  py::class_<PyTokenizer>(m, "Tokenizer")
      .def(py::init<const std::string&>(), py::arg("path"),
           "Load DIR/tokenizer.json and DIR/tokenizer_config.json (a checkpoint directory)")
      .def("encode", &PyTokenizer::encode, py::arg("text"), py::arg("add_special_tokens") = false)
      .def("decode", &PyTokenizer::decode, py::arg("ids"), py::arg("skip_special_tokens") = false)
      .def("apply_chat_template", &PyTokenizer::apply_chat_template, py::arg("messages"),
           py::arg("add_generation_prompt") = true, py::arg("tokenize") = false,
           py::arg("tools") = py::none(),
           "Render messages with the chat template (as transformers does); ids with tokenize")
      .def_property_readonly("vocab_size",
                             [](const PyTokenizer& t) { return t.tokenizer().vocab_size(); })
      .def_property_readonly("bos_token_id",
                             [](const PyTokenizer& t) { return t.tokenizer().bos_id(); })
      .def_property_readonly("eos_token_id",
                             [](const PyTokenizer& t) { return t.tokenizer().eos_id(); });
}
