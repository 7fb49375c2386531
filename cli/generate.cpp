// generate.cpp: `troupe generate`: load the model, build the prompt, stream the continuation to stdout.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <random>

#include "commands.hpp"
#include "load.hpp"
#include "prompt.hpp"

namespace troupe::cli {

namespace {

int fail(const Error& e) {
  std::fprintf(stderr, "error: %s\n", e.message.c_str());
  return 1;
}

// The prompt's token ids: raw text as given, or a chat message rendered with the model's own template.
Expected<std::vector<TokenId>> build_prompt(const GenerateOptions& o, const GgufFile& file, const Tokenizer& tok) {
  if (o.chat.empty()) return encode_text(tok, o.prompt);
  auto tmpl = load_chat_template(file);
  if (!tmpl) return tmpl.error();
  std::vector<ChatMessage> messages;
  if (!o.system.empty()) messages.push_back({"system", o.system});
  messages.push_back({"user", o.chat});
  return encode_chat(*tmpl, tok, messages);
}

}  // namespace

int run_generate(GenerateOptions o) {
  if (o.verbose) spdlog::set_level(spdlog::level::debug);
  if (o.prompt.empty() == o.chat.empty()) {
    return fail({ErrorKind::invalid_argument, "give exactly one of --prompt and --chat"});
  }
  auto loaded = load_model(o.model_path);
  if (!loaded) return fail(loaded.error());
  const GgufFile& file = *loaded->file;
  const Tokenizer& tokenizer = loaded->tokenizer;
  const std::shared_ptr<const Model>& model = loaded->model;
  const ModelConfig& c = model->config();

  auto bias = parse_logit_bias(o.logit_bias, c.n_vocab);
  if (!bias) return fail(bias.error());
  o.params.sampling.logit_bias = std::move(*bias);
  auto prompt = build_prompt(o, file, tokenizer);
  if (!prompt) return fail(prompt.error());

  const int n_ctx = std::min(o.ctx_size, c.n_ctx_train);
  Forward forward(model, o.batch_size, o.precision);
  KvCache cache = forward.make_cache(n_ctx);
  spdlog::debug("model: {} layers, {} embd, {} heads ({} kv), vocab {}; kernels {}; context {} ({} MiB KV)",
                c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_vocab, kernels().name, n_ctx, cache.bytes() >> 20);

  auto stats = generate(forward, cache, tokenizer, *prompt, o.params, [](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  if (!stats) return fail(stats.error());
  const double tps = stats->decode_seconds > 0 ? stats->n_generated / stats->decode_seconds : 0;
  const double pps = stats->prefill_seconds > 0 ? stats->n_prompt / stats->prefill_seconds : 0;
  if (o.verbose) {
    std::fprintf(stderr, "prompt: %d tokens, %.1f tok/s; generated: %d tokens, %.1f tok/s; finish: %s\n",
                 stats->n_prompt, pps, stats->n_generated, tps, to_string(stats->finish_reason));
  }
  return 0;
}

}  // namespace troupe::cli
