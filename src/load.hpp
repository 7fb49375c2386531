// load.hpp: a model file opened for use, as every command opens it: the GGUF file (untrusted: gguf.hpp), the llama
// model on its tensors (model.hpp) and the tokenizer on its vocabulary (tokenizer.hpp), checked against each other.
//
//   load_model(path)   open, parse and check; an Error (invalid_model or io) that names the file and what is wrong
//   load_model(file)   the same on a file already parsed (tests)
//   check_vocabulary   the tokenizer has exactly one token per row of the embedding: a larger vocabulary would feed
//                      the model ids past its embedding, a smaller one would let the sampler pick ids no text has
#pragma once

#include <memory>
#include <string>

#include "error.hpp"
#include "gguf.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace troupe {

struct LoadedModel {
  std::shared_ptr<const GgufFile> file;  // kept: the model's tensors live in its mapping
  std::shared_ptr<const Model> model;
  Tokenizer tokenizer;
};

Expected<LoadedModel> load_model(const std::string& path);
Expected<LoadedModel> load_model(std::shared_ptr<const GgufFile> file);

Expected<void> check_vocabulary(const Tokenizer& tokenizer, const ModelConfig& config);

}  // namespace troupe
