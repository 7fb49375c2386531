// load.cpp: a model file opened for use (see load.hpp).
#include "load.hpp"

namespace troupe {

Expected<void> check_vocabulary(const Tokenizer& tokenizer, const ModelConfig& config) {
  if (tokenizer.n_vocab() == config.n_vocab) return {};
  return Error{ErrorKind::invalid_model, "the vocabulary has " + std::to_string(tokenizer.n_vocab()) +
                                             " tokens but the embedding has " + std::to_string(config.n_vocab) +
                                             " rows"};
}

Expected<LoadedModel> load_model(std::shared_ptr<const GgufFile> file) {
  // The model's errors and the file's typed accessors name the file already; the tokenizer's own checks and the
  // vocabulary check get its name here.
  const std::string name = (file->path().empty() ? std::string("GGUF") : file->path()) + ": ";
  auto named = [&](const Error& e) { return e.message.rfind(name, 0) == 0 ? e : Error{e.kind, name + e.message}; };
  auto model = Model::load(file);
  if (!model) return model.error();
  auto tokenizer = Tokenizer::from_gguf(*file);
  if (!tokenizer) return named(tokenizer.error());
  if (auto ok = check_vocabulary(*tokenizer, (*model)->config()); !ok) return named(ok.error());
  return LoadedModel{std::move(file), std::move(*model), std::move(*tokenizer)};
}

Expected<LoadedModel> load_model(const std::string& path) {
  auto file = GgufFile::open(path);
  if (!file) return file.error();
  return load_model(std::move(*file));
}

}  // namespace troupe
