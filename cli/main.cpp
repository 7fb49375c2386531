// main.cpp: the troupe command. It only parses the command line and wires the parts together.
//   troupe inspect MODEL        metadata and tensor table of a GGUF file
//   troupe generate ...         run the model on a prompt, streaming text to stdout
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "gguf.hpp"

namespace {

int run_inspect(const std::string& path) {
  auto file = troupe::GgufFile::open(path);
  if (!file) {
    std::fprintf(stderr, "error: %s\n", file.error().message.c_str());
    return 1;
  }
  const auto& f = **file;
  std::printf("GGUF v%u, %zu bytes, alignment %llu, data at %llu\n", f.version(), f.file_size(),
              static_cast<unsigned long long>(f.alignment()), static_cast<unsigned long long>(f.data_offset()));
  std::printf("\nmetadata (%zu):\n", f.metadata().size());
  for (const auto& [key, value] : f.metadata()) std::printf("  %-40s %s\n", key.c_str(), value.to_display().c_str());
  std::printf("\ntensors (%zu):\n", f.tensors().size());
  for (const auto& t : f.tensors()) {
    std::string shape;
    for (size_t k = 0; k < t.dims.size(); ++k) shape += (k ? " x " : "") + std::to_string(t.dims[k]);
    std::printf("  %-32s %-6s %-16s %10llu bytes at %llu\n", t.name.c_str(), t.traits->name, shape.c_str(),
                static_cast<unsigned long long>(t.n_bytes), static_cast<unsigned long long>(t.offset));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Troupe: an LLM inference server that runs a model as a troupe of actors"};
  app.require_subcommand(1);

  std::string inspect_path;
  auto* inspect = app.add_subcommand("inspect", "Print a GGUF file's metadata and tensor table");
  inspect->add_option("model", inspect_path, "GGUF file")->required();

  CLI11_PARSE(app, argc, argv);
  if (*inspect) return run_inspect(inspect_path);
  return 0;
}
