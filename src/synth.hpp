// synth.hpp: synthetic llama models. A GGUF file of any llama shape and weight type, with seeded random weights and
// a small byte-level vocabulary, for checks on machines that cannot fetch a real model (the GPU device check makes
// its models where it runs: only 64 MiB travel there).
//
//   synth_shape(name)             a named shape: "smollm2-135m" (the default model's), "llama-1b", "llama-8b"
//   check_synth_spec(spec)        refuses a shape the loader would refuse or the kernels cannot run
//   write_synth_gguf(spec, path)  writes the file: the same spec and seed give the same bytes
//
// What the file holds:
//   - llama metadata for the spec's shape (GGUF v3, tensor data aligned to 32 bytes);
//   - a "gpt2" byte-level BPE vocabulary of exactly n_vocab tokens: 3 control tokens (<|endoftext|>, <|im_start|>
//     = BOS, <|im_end|> = EOS), the 256 byte tokens, then letter strings ("ab", "Ġa", "abc", "Ġab", ...) each with
//     the merge that makes it, so text of lower-case words encodes to multi-letter tokens; a ChatML chat template;
//   - weights drawn directly in their stored encoding: random 4- or 8-bit values and per-block fp16 scales, so a
//     file of several GB takes seconds. Every element is zero-mean; a matrix with `cols` inputs has element standard
//     deviation 1/sqrt(cols), so each projection keeps its input's scale and the residual stream grows only as the
//     square root of the depth; the embedding is small (0.02, as in trained models), its rows (and an untied
//     output's) vary in magnitude (log-normal, 0.1), and output_norm's weights set the logits' standard deviation
//     to `logit_std`, so the top-1 logit leads the second by a useful margin (a GPU-vs-CPU greedy comparison needs
//     margins that are not all tiny). Norm weights are otherwise 1.
//   Each row of each tensor draws from its own stream (seed, tensor name, row), so a tensor of the same name, shape
//   and type is the same whatever else the spec changes (more layers keep the first ones), and the rows can be drawn
//   in parallel without changing a byte.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"
#include "gguf.hpp"

namespace troupe {

struct SynthSpec {
  std::string name = "smollm2-135m";  // for general.name ("synthetic NAME")
  int n_vocab = 49152;                // tokens = rows of token_embd (at least 259: 3 control + 256 bytes)
  int n_embd = 576;                   // hidden size
  int n_layer = 30;
  int n_head = 9;                     // query heads; head_dim = n_embd / n_head
  int n_head_kv = 3;                  // key/value heads (n_head % n_head_kv == 0)
  int n_ff = 1536;                    // FFN hidden size
  int n_ctx = 8192;                   // llama.context_length
  float rope_theta = 100000.0f;
  float rms_eps = 1e-5f;
  GgmlType weight_type = GgmlType::q4_1;  // attn_q/k/v/output, ffn_gate/up/down
  GgmlType embd_type = GgmlType::q8_0;    // token_embd (also the output when tied)
  GgmlType output_type = GgmlType::q8_0;  // output.weight when not tied
  bool tied = true;                   // no output.weight: the output projection is token_embd
  float logit_std = 4.0f;             // standard deviation of the logits over the vocabulary
  uint64_t seed = 0;
};

// The named shapes, in the order `troupe synth --help` lists them.
std::vector<std::string> synth_shape_names();
// A named shape with its defaults (Q4_1 layers, Q8_0 embedding and output, seed 0); invalid_argument if unknown.
Expected<SynthSpec> synth_shape(const std::string& name);

// invalid_argument naming the first problem: a dimension out of the loader's range, n_embd % n_head,
// n_head % n_head_kv, an odd head size, a quantised matrix whose input dimension is not a multiple of 32, a
// vocabulary smaller than 259, a weight type other than f32, f16, q4_0, q4_1, q8_0.
Expected<void> check_synth_spec(const SynthSpec& spec);

// Bytes the file will have (0 for a spec check_synth_spec refuses).
uint64_t synth_file_size(const SynthSpec& spec);

// Writes the model to `path` (through `path`.tmp, renamed when complete). invalid_argument for a spec that
// check_synth_spec refuses, io when the file cannot be written.
Expected<void> write_synth_gguf(const SynthSpec& spec, const std::string& path);

}  // namespace troupe
