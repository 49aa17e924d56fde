// export_vocab.h: the vocabulary dsmoe export writes into a GGUF file (tokenizer.ggml.*): the
// checkpoint's tokenizer.json when it has one, else a synthetic byte-level one.
#pragma once
#include <string>

#include "io/gguf.h"
#include "model/config.h"

namespace dsmoe::cli {

// Adds tokenizer.ggml.model ("gpt2": byte-level BPE), .pre, .tokens, .token_type, .merges and the
// bos/eos ids to `writer`, config.vocab_size tokens in all.
//  * With `model_dir`/tokenizer.json: its model.vocab, model.merges (either "a b" strings or
//    [a, b] pairs) and added_tokens (special -> control, else user-defined); ids the file lacks
//    up to vocab_size are "[PAD<id>]", unused. `tokenizer_pre` names llama.cpp's pre-tokenizer
//    (empty: deepseek-v3 for V3 checkpoints, deepseek-llm otherwise).
//  * Without: ids 0..255 are the 256 bytes in GPT-2's byte-to-unicode spelling (as dsmoe train's
//    byte-level tokenizer numbers them, so a model trained by dsmoe reads and writes text in
//    llama.cpp's tools), the rest "<t<id>>"; no merges; pre-tokenizer "default".
// The config's bos/eos ids, when inside the vocabulary, are control tokens.
void add_vocabulary(GgufWriter& writer, const ModelConfig& config, const std::string& model_dir,
                    const std::string& tokenizer_pre);

// GPT-2's byte-level spelling of one byte (bytes_to_unicode): printable bytes stand for
// themselves, the others map to U+0100 onwards; UTF-8 encoded.
std::string byte_level_token(unsigned char byte);

}  // namespace dsmoe::cli
