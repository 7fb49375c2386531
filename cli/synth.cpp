// synth.cpp: `troupe synth`: writes a synthetic llama model (src/synth.hpp) of a named shape, with any dimension
// overridden, and says what it wrote.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "commands.hpp"
#include "synth.hpp"

namespace troupe::cli {

namespace {

int fail(const Error& e) {
  std::fprintf(stderr, "error: %s\n", e.message.c_str());
  return 1;
}

const char* type_name(GgmlType t) { return ggml_type_traits(static_cast<uint32_t>(t))->name; }

// A weight type by name (main.cpp lets only these through).
GgmlType type_of(const std::string& name) {
  for (const GgmlType t : {GgmlType::f32, GgmlType::f16, GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0}) {
    if (name == type_name(t)) return t;
  }
  return GgmlType::bf16;  // not a synth type: check_synth_spec refuses it
}

}  // namespace

void add_synth_options(CLI::App& app, SynthOptions& o) {
  std::string shapes;
  for (const auto& n : synth_shape_names()) shapes += (shapes.empty() ? "" : ", ") + n;
  const auto types = CLI::IsMember({"f32", "f16", "q4_0", "q4_1", "q8_0"});
  app.add_option("--shape", o.shape, "named shape: " + shapes)->capture_default_str();
  app.add_option("--type", o.type, "weight type of the layers' matrices")->check(types)->capture_default_str();
  app.add_option("--embd-type", o.embd_type, "type of token_embd (default q8_0)")->check(types);
  app.add_option("--output-type", o.output_type, "type of output.weight when untied (default q8_0)")->check(types);
  auto* tied = app.add_flag_callback("--tied", [&o] { o.tied = true; }, "no output.weight: the output is token_embd");
  auto* untied = app.add_flag_callback("--untied", [&o] { o.tied = false; }, "a separate output.weight");
  tied->excludes(untied);
  app.add_option("-o,--out", o.out, "output file (default SHAPE.TYPE.gguf)");
  app.add_option("--seed", o.seed, "random seed: the same seed and shape give the same bytes")->capture_default_str();
  app.add_option("--layers", o.n_layer, "override: transformer layers")->check(CLI::NonNegativeNumber);
  app.add_option("--embd", o.n_embd, "override: hidden size")->check(CLI::NonNegativeNumber);
  app.add_option("--heads", o.n_head, "override: query heads")->check(CLI::NonNegativeNumber);
  app.add_option("--kv-heads", o.n_head_kv, "override: key/value heads")->check(CLI::NonNegativeNumber);
  app.add_option("--ff", o.n_ff, "override: FFN hidden size")->check(CLI::NonNegativeNumber);
  app.add_option("--vocab", o.n_vocab, "override: vocabulary size")->check(CLI::NonNegativeNumber);
  app.add_option("--ctx", o.n_ctx, "override: training context length")->check(CLI::NonNegativeNumber);
}

int run_synth(const SynthOptions& o) {
  auto shape = synth_shape(o.shape);
  if (!shape) return fail(shape.error());
  SynthSpec spec = *shape;
  bool changed = false;
  auto override_dim = [&](int value, int& dim) {
    if (value < 0 || value == dim) return;
    dim = value;
    changed = true;
  };
  override_dim(o.n_layer, spec.n_layer);
  override_dim(o.n_embd, spec.n_embd);
  override_dim(o.n_head, spec.n_head);
  override_dim(o.n_head_kv, spec.n_head_kv);
  override_dim(o.n_ff, spec.n_ff);
  override_dim(o.n_vocab, spec.n_vocab);
  override_dim(o.n_ctx, spec.n_ctx);
  if (changed) spec.name += " (modified)";
  spec.weight_type = type_of(o.type);
  if (!o.embd_type.empty()) spec.embd_type = type_of(o.embd_type);
  if (!o.output_type.empty()) spec.output_type = type_of(o.output_type);
  if (o.tied) spec.tied = *o.tied;
  spec.seed = o.seed;
  if (auto ok = check_synth_spec(spec); !ok) return fail(ok.error());

  const std::string path = o.out.empty() ? o.shape + "." + o.type + ".gguf" : o.out;
  const auto t0 = std::chrono::steady_clock::now();
  if (auto ok = write_synth_gguf(spec, path); !ok) return fail(ok.error());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::error_code ec;
  const unsigned long long bytes = std::filesystem::file_size(path, ec);
  std::printf("wrote %s: %llu bytes (%.1f MiB) in %.1f s\n", path.c_str(), bytes, bytes / 1048576.0, seconds);
  std::printf("shape %s: %d layers, embedding %d, %d heads (%d KV), head size %d, FFN %d, vocabulary %d, context %d\n",
              spec.name.c_str(), spec.n_layer, spec.n_embd, spec.n_head, spec.n_head_kv, spec.n_embd / spec.n_head,
              spec.n_ff, spec.n_vocab, spec.n_ctx);
  std::printf("weights %s, token_embd %s, output %s, seed %llu\n", type_name(spec.weight_type),
              type_name(spec.embd_type), spec.tied ? "tied to token_embd" : type_name(spec.output_type),
              static_cast<unsigned long long>(spec.seed));
  return 0;
}

}  // namespace troupe::cli
