// peers_logits.cpp: the logits llama.cpp computes for given token ids, for bench/peers.sh's
// same-model check against `dsmoe forward`. Built by peers.sh against the llama.cpp it fetched
// (llama.h's public API only); not part of the dsmoe build.
//   peers_logits MODEL.gguf IDS(comma-separated) OUT.f32 [THREADS]
// writes float32 logits [n_ids, n_vocab], row after row, for every position of one sequence fed
// as one batch from an empty float32 cache (no BOS added).
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.gguf IDS OUT.f32 [THREADS]\n", argv[0]);
    return 2;
  }
  std::vector<llama_token> ids;
  std::stringstream list(argv[2]);
  for (std::string item; std::getline(list, item, ',');) ids.push_back(std::atoi(item.c_str()));
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2;
  const int n = static_cast<int>(ids.size());

  llama_backend_init();
  llama_model_params model_params = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(argv[1], model_params);
  if (model == nullptr) {
    std::fprintf(stderr, "%s: cannot load\n", argv[1]);
    return 1;
  }
  llama_context_params context_params = llama_context_default_params();
  context_params.n_ctx = static_cast<uint32_t>(n < 256 ? 256 : n);
  context_params.n_batch = context_params.n_ubatch = static_cast<uint32_t>(n);
  context_params.n_threads = context_params.n_threads_batch = threads;
  // A float32 cache (llama.cpp's default is f16): the check compares the models, not the caches.
  context_params.type_k = context_params.type_v = GGML_TYPE_F32;
  llama_context* context = llama_init_from_model(model, context_params);
  if (context == nullptr) {
    std::fprintf(stderr, "cannot create a context\n");
    return 1;
  }
  llama_batch batch = llama_batch_init(n, 0, 1);
  batch.n_tokens = n;
  for (int i = 0; i < n; i++) {
    batch.token[i] = ids[i];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;  // every position's logits
  }
  if (llama_decode(context, batch) != 0) {
    std::fprintf(stderr, "llama_decode failed\n");
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  std::FILE* out = std::fopen(argv[3], "wb");
  if (out == nullptr) {
    std::fprintf(stderr, "%s: cannot create\n", argv[3]);
    return 1;
  }
  for (int i = 0; i < n; i++)
    std::fwrite(llama_get_logits_ith(context, i), sizeof(float), n_vocab, out);
  std::fclose(out);
  std::fprintf(stderr, "peers_logits: %d positions x %d logits -> %s\n", n, n_vocab, argv[3]);
  llama_batch_free(batch);
  llama_free(context);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
