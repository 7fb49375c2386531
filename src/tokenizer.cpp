// tokenizer.cpp: vocabulary loading, special-token partition, byte-level BPE and detokenization, each following
// llama.cpp's src/llama-vocab.cpp (commit 0c1e57098bba) so that ids and bytes agree exactly.
#include "tokenizer.hpp"

#include <algorithm>
#include <cstdio>
#include <queue>
#include <unordered_map>

#include "unicode.hpp"

namespace troupe {

namespace {

// ---- token attributes (llama_token_attr bits) ----
enum Attr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,
  kAttrUserDefined = 1u << 4,
  kAttrByte = 1u << 5,
};

// tokenizer.ggml.token_type values -> attributes
uint32_t attr_of_type(int64_t type) {
  switch (type) {
    case 1: return kAttrNormal;
    case 2: return kAttrUnknown;
    case 3: return kAttrControl;
    case 4: return kAttrUserDefined;
    case 5: return kAttrUnused;
    case 6: return kAttrByte;
    default: return kAttrUndefined;
  }
}

// ---- pre-tokenizers ----
// llama.cpp classifies code points with its own tables (src/unicode-data.cpp, Unicode 15), PCRE2 10.42 with
// Unicode 14's. The code points Unicode 15 added as letters, numbers and punctuation are listed here (from a
// comparison of the two tables over all code points) so both agree; with a newer PCRE2 the lists are redundant.
// Its `\s` is its own set too (unicode_set_whitespace), spelled out so that PCRE2's \s cannot differ.
const std::string kLetter =
    "\\p{L}\\x{1123F}-\\x{11240}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}"
    "\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}"
    "\\x{31350}-\\x{323AF}";
const std::string kNumber = "\\p{N}\\x{11F50}-\\x{11F59}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}";
const std::string kPunct = "\\p{P}\\x{11B00}-\\x{11B09}\\x{11F43}-\\x{11F4F}";
const std::string kWs =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
// llama.cpp: "'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)" (unicode_regex_split_custom_gpt2)
const std::string kGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?[" + kLetter + "]+| ?[" + kNumber + "]+| ?[^" + kWs + kLetter +
                               kNumber + "]+|[" + kWs + "]+(?![^" + kWs + "])";

// llama.cpp (LLAMA3, and DBRX/SMAUG without its flags): its adapted form of
// "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
// (unicode_regex_split_custom_llama3). QWEN2 is the same with \p{N} instead of \p{N}{1,3}.
std::string llama3_style_regex(const std::string& numbers) {
  return "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n" + kLetter + kNumber + "]?[" + kLetter +
         "]+|[" + kNumber + "]" + numbers + "| ?[^" + kWs + kLetter + kNumber + "]+[\\r\\n]*|[" + kWs + "]*[\\r\\n]+|[" +
         kWs + "]+(?![^" + kWs + "])|[" + kWs + "]+";
}

struct PreTokenizerSpec {
  std::vector<std::string> regexes;  // applied one after another
  bool clean_spaces = false;         // llama.cpp's clean_up_tokenization_spaces in detokenize
  bool ignore_merges = false;        // a piece that is itself a token is taken whole, without merges
  bool add_bos = false;              // default when tokenizer.ggml.add_bos_token is absent
};

// tokenizer.ggml.pre names as llama_vocab::impl::load maps them, for the pre-tokenizer types Troupe implements; each
// type's regexes as llm_tokenizer_bpe's constructor lists them. BPE vocabularies clean spaces unless a name says not.
Expected<PreTokenizerSpec> pre_tokenizer_spec(const std::string& name) {
  auto is = [&](std::initializer_list<const char*> names) {
    for (const char* n : names) {
      if (name == n) return true;
    }
    return false;
  };
  const std::vector<std::string> gpt2 = {kGpt2Regex};
  const std::vector<std::string> starcoder = {"[" + kNumber + "]", kGpt2Regex};
  const std::vector<std::string> llama3 = {llama3_style_regex("{1,3}")};
  const std::vector<std::string> qwen2 = {llama3_style_regex("")};
  if (name == "default" || name.empty()) {  // llama.cpp warns when the key is missing and uses this
    return PreTokenizerSpec{{"[" + kPunct + "\\$\\+<=>\\^~\\|]+", kGpt2Regex, "[" + kNumber + "]+", "[0-9][0-9][0-9]"},
                            true};
  }
  if (is({"gpt-2", "gpt2", "phi-2", "gigachat", "a.x-4.0", "mellum", "mpt", "olmo", "jais", "exaone4"})) {
    return PreTokenizerSpec{gpt2, true};
  }
  if (is({"trillion", "granite-docling"})) return PreTokenizerSpec{gpt2, false};
  if (is({"smollm", "command-r"})) return PreTokenizerSpec{starcoder, false};
  if (is({"starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"})) {
    return PreTokenizerSpec{starcoder, true};
  }
  if (is({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"})) {
    return PreTokenizerSpec{llama3, true, true, true};
  }
  if (is({"dbrx", "smaug-bpe"})) return PreTokenizerSpec{llama3, true};
  if (is({"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"})) {
    return PreTokenizerSpec{qwen2, false};
  }
  if (is({"megrez", "stablelm2"})) return PreTokenizerSpec{qwen2, true};
  return Error{ErrorKind::invalid_model,
               "unsupported pre-tokenizer '" + name +
                   "' (tokenizer.ggml.pre); supported: default, the gpt-2, smollm/starcoder, llama3/llama-bpe and qwen2 "
                   "families"};
}

// Token texts llama.cpp treats as end of generation (and forces to control type).
bool is_eog_text(const std::string& t) {
  static const char* const kNames[] = {
      "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
      "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
      "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
      "[e~[",
  };
  for (const char* n : kNames) {
    if (t == n) return true;
  }
  return false;
}

std::string hex2(uint8_t b) {
  char buf[3];
  std::snprintf(buf, sizeof buf, "%02x", b);
  return buf;
}

// llama_decode_text: a byte-level token text -> its bytes.
std::string decode_byte_level(const std::string& text) {
  std::vector<uint32_t> cps;
  unicode::decode_utf8_lenient(text, cps);
  std::string out;
  for (const uint32_t cp : cps) {
    const int b = unicode::bpe_char_to_byte(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {  // llama.cpp writes this marker (with the whole token text inside, as it does)
      std::string utf8;
      unicode::append_utf8(utf8, cp);
      out += "[UNK_BYTE_0x";
      for (const char c : utf8) out += hex2(static_cast<uint8_t>(c));
      out += text + "]";
    }
  }
  return out;
}

// token_to_byte for byte-type tokens: strtol(text.substr(3, 2), 16), e.g. "<0x0A>".
std::string byte_token_piece(const std::string& text) {
  if (text.size() < 3) return "";
  int value = 0;
  for (size_t i = 3; i < std::min<size_t>(5, text.size()); ++i) {
    const char c = text[i];
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    if (d < 0) break;
    value = value * 16 + d;
  }
  return std::string(1, static_cast<char>(value));
}

// llama_vocab::impl::detokenize's clean_spaces passes, in place, as written there.
void clean_spaces(std::string& s) {
  int64_t total = static_cast<int64_t>(s.size());
  char* text = s.data();
  // first pass: " ?", " !", " .", " ,"
  {
    const int64_t total1 = total;
    total = total ? 1 : 0;
    for (int64_t i = 1; i < total1; ++i) {
      const char x = text[i];
      if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) total--;
      text[total++] = x;
    }
  }
  // second pass: strip a single apostrophe's surrounding spaces, " ' "
  {
    const int64_t total2 = total;
    total = total ? 1 : 0;
    for (int64_t i = 1; i < total2; ++i) {
      const char x = text[i];
      if (x == '\'' && i + 1 < total2 && text[i - 1] == ' ' && text[i + 1] == ' ') {
        total--;
        text[++i] = '\0';
      }
      text[total++] = x;
    }
  }
  // third pass: contractions " 's", " 'm", " 're", " 've"
  {
    const int64_t total3 = total;
    total = total ? 1 : 0;
    for (int64_t i = 1; i < total3; ++i) {
      const char x = text[i];
      if (text[i - 1] == ' ' && x == '\'' && i + 1 < total3) {
        const char x1 = text[i + 1];
        if (x1 == 's' || x1 == 'm') {
          total--;
        } else if (i + 2 < total3) {
          const char x2 = text[i + 2];
          if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) total--;
        }
      }
      text[total++] = x;
    }
  }
  s.resize(static_cast<size_t>(total));
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

// ---- the vocabulary ----

struct Tokenizer::Impl {
  struct Merge {
    int32_t rank;    // position in tokenizer.ggml.merges
    int32_t result;  // symbol id of the merged text
  };

  std::string pre_name;
  std::vector<std::string> text;    // (n_vocab) as stored, byte-level encoded
  std::vector<uint32_t> attr;       // (n_vocab) Attr bits
  std::vector<std::string> piece;   // (n_vocab) bytes as llama_token_to_piece(special=true) gives them
  std::vector<uint8_t> eog;         // (n_vocab) 1 for end-of-generation tokens
  std::unordered_map<std::string, TokenId> id_of_text;

  // BPE symbols are ids of byte-level strings: vocabulary ids, then strings that occur only in merges.
  std::unordered_map<std::string, int32_t> extra_symbols;  // text -> id >= n_vocab
  std::unordered_map<uint64_t, Merge> merges;              // (left symbol, right symbol) -> merge
  std::array<int32_t, 256> byte_symbol{};                  // symbol of each single byte, -1 if none

  std::vector<TokenId> specials;  // control, user-defined and unknown tokens, longest text first
  TokenId bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, pad = -1;
  bool add_bos = false, add_eos = false, clean_spaces = false;
  bool ignore_merges = false;  // llama3-style: a piece that is a token is not merged
  unicode::RegexSplitter splitter;

  int32_t n_vocab() const { return static_cast<int32_t>(text.size()); }

  int32_t symbol_of(const std::string& s) const {
    if (auto it = id_of_text.find(s); it != id_of_text.end()) return it->second;
    if (auto it = extra_symbols.find(s); it != extra_symbols.end()) return it->second;
    return -1;
  }
  int32_t intern(const std::string& s) {
    if (const int32_t id = symbol_of(s); id >= 0) return id;
    const auto id = static_cast<int32_t>(text.size() + extra_symbols.size());
    extra_symbols.emplace(s, id);
    return id;
  }

  void bpe(const std::string& bytes, std::vector<TokenId>& out) const;
  void tokenize_fragment(std::string_view fragment, std::vector<TokenId>& out) const;
};

namespace {

Expected<TokenId> read_special_id(const GgufFile& file, const std::string& key, TokenId fallback, int32_t n_vocab) {
  const GgufValue* v = file.find(key);
  if (!v) return fallback >= 0 && fallback < n_vocab ? fallback : -1;
  int64_t id = 0;
  if (!v->as_int(id)) return Error{ErrorKind::invalid_model, key + " is not an integer"};
  if (id == -1 || id == 0xFFFFFFFF) return TokenId{-1};
  if (id < 0 || id >= n_vocab) {
    return Error{ErrorKind::invalid_model,
                 key + " = " + std::to_string(id) + " is out of range (vocabulary of " + std::to_string(n_vocab) + ")"};
  }
  return static_cast<TokenId>(id);
}

Expected<bool> read_bool(const GgufFile& file, const std::string& key, bool fallback) {
  const GgufValue* v = file.find(key);
  if (!v) return fallback;
  if (v->type != GgufValueType::boolean) return Error{ErrorKind::invalid_model, key + " is not a boolean"};
  return v->u != 0;
}

}  // namespace

Expected<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
  auto impl = std::make_shared<Impl>();

  auto model = file.get_string("tokenizer.ggml.model");
  if (!model) return model.error();
  if (*model != "gpt2") {
    return Error{ErrorKind::invalid_model,
                 "unsupported tokenizer model '" + *model + "' (tokenizer.ggml.model); only byte-level BPE 'gpt2' is"};
  }
  if (const GgufValue* pre = file.find("tokenizer.ggml.pre")) {
    if (pre->type != GgufValueType::string) return Error{ErrorKind::invalid_model, "tokenizer.ggml.pre is not a string"};
    impl->pre_name = pre->s;
  } else {
    impl->pre_name = "default";
  }
  auto spec = pre_tokenizer_spec(impl->pre_name);
  if (!spec) return spec.error();
  impl->clean_spaces = spec->clean_spaces;
  impl->ignore_merges = spec->ignore_merges;
  auto splitter = unicode::RegexSplitter::create(spec->regexes);
  if (!splitter) return splitter.error();
  impl->splitter = std::move(*splitter);

  // tokens and their types
  auto tokens = file.get_array("tokenizer.ggml.tokens", GgufValueType::string);
  if (!tokens) return tokens.error();
  const auto& items = (*tokens)->items;
  if (items.empty() || items.size() > static_cast<size_t>(INT32_MAX / 2)) {
    return Error{ErrorKind::invalid_model, "tokenizer.ggml.tokens has " + std::to_string(items.size()) + " entries"};
  }
  const auto n_vocab = static_cast<int32_t>(items.size());
  impl->text.resize(n_vocab);
  impl->attr.assign(n_vocab, kAttrNormal);
  if (file.find("tokenizer.ggml.token_type")) {
    auto types = file.get_array("tokenizer.ggml.token_type", GgufValueType::i32);
    if (!types) return types.error();
    if ((*types)->items.size() != items.size()) {
      return Error{ErrorKind::invalid_model, "tokenizer.ggml.token_type has " +
                                                 std::to_string((*types)->items.size()) + " entries for " +
                                                 std::to_string(items.size()) + " tokens"};
    }
    for (int32_t i = 0; i < n_vocab; ++i) impl->attr[i] = attr_of_type((*types)->items[i].i);
  }
  impl->id_of_text.reserve(items.size());
  for (int32_t i = 0; i < n_vocab; ++i) {
    std::string word = items[i].s;
    if (word.empty()) word = "[EMPTY_" + std::to_string(i) + "]";  // as llama.cpp
    if (!impl->id_of_text.emplace(word, i).second) {
      return Error{ErrorKind::invalid_model, "tokenizer.ggml.tokens: token " + std::to_string(i) +
                                                 " repeats the text of token " +
                                                 std::to_string(impl->id_of_text[word])};
    }
    impl->text[i] = std::move(word);
  }

  // merges: "left right", split at the first space after the first byte; rank = order, the first of duplicates
  // wins; a merge without such a space can never apply (llama.cpp stores it as ("", "")) and is skipped.
  auto merges = file.get_array("tokenizer.ggml.merges", GgufValueType::string);
  if (!merges) return merges.error();
  const auto& merge_items = (*merges)->items;
  if (merge_items.size() > static_cast<size_t>(INT32_MAX / 4)) {
    return Error{ErrorKind::invalid_model, "tokenizer.ggml.merges is too long"};
  }
  impl->merges.reserve(merge_items.size());
  for (size_t rank = 0; rank < merge_items.size(); ++rank) {
    const std::string& word = merge_items[rank].s;
    const size_t space = word.find(' ', 1);
    if (space == std::string::npos) continue;
    const std::string left = word.substr(0, space), right = word.substr(space + 1);
    if (right.empty()) continue;
    const int32_t l = impl->intern(left), r = impl->intern(right), m = impl->intern(left + right);
    impl->merges.emplace(pair_key(l, r), Impl::Merge{static_cast<int32_t>(rank), m});
  }
  const auto& byte_chars = unicode::byte_to_bpe_char();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(s, byte_chars[b]);
    impl->byte_symbol[b] = impl->symbol_of(s);
  }

  // special ids (gpt2 vocabularies default to 11 for BOS and EOS, as in llama.cpp)
  struct {
    const char* key;
    TokenId* id;
    TokenId fallback;
  } const ids[] = {
      {"tokenizer.ggml.bos_token_id", &impl->bos, 11},      {"tokenizer.ggml.eos_token_id", &impl->eos, 11},
      {"tokenizer.ggml.eot_token_id", &impl->eot, -1},      {"tokenizer.ggml.eom_token_id", &impl->eom, -1},
      {"tokenizer.ggml.unknown_token_id", &impl->unk, -1},  {"tokenizer.ggml.padding_token_id", &impl->pad, -1},
  };
  for (const auto& s : ids) {
    auto id = read_special_id(file, s.key, s.fallback, n_vocab);
    if (!id) return id.error();
    *s.id = *id;
  }
  auto add_bos = read_bool(file, "tokenizer.ggml.add_bos_token", spec->add_bos);
  if (!add_bos) return add_bos.error();
  auto add_eos = read_bool(file, "tokenizer.ggml.add_eos_token", false);
  if (!add_eos) return add_eos.error();
  impl->add_bos = *add_bos && impl->bos >= 0;
  impl->add_eos = *add_eos && impl->eos >= 0;

  // Fill-in-the-middle tokens (prefix, suffix, middle, pad, repo, file separator): named by the file, or else found
  // by their text as llama.cpp does. Each one found is forced to control type; pad, repo and separator also end
  // generation (SmolLM2's "<reponame>", id 4, is one). llama.cpp takes the first match in the iteration order of its
  // std::unordered_map token_to_id, built by inserting the tokens in id order; the map below is built the same way
  // so that a vocabulary with two candidates of one kind gets the same one.
  enum { kFimPre, kFimSuf, kFimMid, kFimPad, kFimRep, kFimSep, kNFim };
  TokenId fim[kNFim] = {-1, -1, -1, -1, -1, -1};
  {
    const char* const keys[kNFim][2] = {
        {"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"},
        {"tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"},
        {"tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"},
        {"tokenizer.ggml.fim_pad_token_id", nullptr},
        {"tokenizer.ggml.fim_rep_token_id", nullptr},
        {"tokenizer.ggml.fim_sep_token_id", nullptr},
    };
    for (int k = 0; k < kNFim; ++k) {
      for (const char* key : keys[k]) {  // the deprecated key, read second, wins as in llama.cpp
        if (!key) continue;
        auto id = read_special_id(file, key, fim[k], n_vocab);
        if (!id) return id.error();
        fim[k] = *id;
      }
    }
    static const std::vector<std::string_view> kFimTexts[kNFim] = {
        {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>",
         "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"},
        {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>", "<SUF>",
         "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"},
        {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>",
         "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"},
        {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
        {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
        {"<|file_sep|>"},
    };
    std::unordered_map<std::string_view, TokenId> token_to_id;  // no reserve(): llama.cpp's map has none either
    for (int32_t i = 0; i < n_vocab; ++i) token_to_id[impl->text[i]] = i;
    for (const auto& [t, id] : token_to_id) {
      for (int k = 0; k < kNFim; ++k) {
        if (fim[k] >= 0) continue;
        for (const std::string_view candidate : kFimTexts[k]) {
          if (t == candidate) {
            fim[k] = id;
            impl->attr[id] |= kAttrControl;
            break;
          }
        }
      }
    }
  }

  // end of generation, as llama.cpp determines it from token texts and special ids
  impl->eog.assign(n_vocab, 0);
  for (const TokenId id : {fim[kFimPad], fim[kFimRep], fim[kFimSep]}) {
    if (id >= 0) impl->eog[id] = 1;
  }
  for (int32_t i = 0; i < n_vocab; ++i) {
    const std::string& t = impl->text[i];
    if (t == "<|channel|>" || t == "<|message|>" || t == "<|start|>" || t == "<|constrain|>") {
      impl->attr[i] = kAttrUserDefined;  // llama.cpp's gpt-oss rule
    } else if (is_eog_text(t)) {
      impl->eog[i] = 1;
      impl->attr[i] |= kAttrControl;
    }
  }
  for (const TokenId id : {impl->eos, impl->eot, impl->eom}) {
    if (id >= 0) impl->eog[id] = 1;
  }
  {
    auto find = [&](const char* t) {
      auto it = impl->id_of_text.find(t);
      return it != impl->id_of_text.end() && impl->eog[it->second] ? it->second : -1;
    };
    const TokenId end = find("<|end|>");
    if (end >= 0 && ((find("<|return|>") >= 0 && (find("<|call|>") >= 0 || find("<|calls|>") >= 0)) ||
                     ((find("<|call|>") >= 0 || find("<|calls|>") >= 0) && find("<|flush|>") >= 0))) {
      impl->eog[end] = 0;
      impl->attr[end] = kAttrUserDefined;
    }
    const TokenId s = find("</s>");
    if (s >= 0 && (find("<|tool_response>") >= 0 || find("<|plamo:eos|>") >= 0)) {
      impl->eog[s] = 0;
      impl->attr[s] = kAttrNormal;
    }
  }

  // special tokens for the partition: llama.cpp sorts them by length with std::sort (not stable), so equal lengths
  // keep the order that std::sort gives; the same call on the same input gives the same order.
  for (int32_t i = 0; i < n_vocab; ++i) {
    if (impl->attr[i] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) impl->specials.push_back(i);
  }
  std::sort(impl->specials.begin(), impl->specials.end(),
            [&](TokenId a, TokenId b) { return impl->text[a].size() > impl->text[b].size(); });

  // pieces (as rendered with special=true)
  impl->piece.resize(n_vocab);
  for (int32_t i = 0; i < n_vocab; ++i) {
    const uint32_t a = impl->attr[i];
    if (a & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      impl->piece[i] = impl->text[i];
    } else if (a & kAttrNormal) {
      impl->piece[i] = decode_byte_level(impl->text[i]);
    } else if (a & kAttrByte) {
      impl->piece[i] = byte_token_piece(impl->text[i]);
    }
  }
  return Tokenizer(std::move(impl));
}

// ---- encoding ----

// Byte-level BPE of one pre-tokenized piece (raw bytes), as llm_tokenizer_bpe_session::tokenize.
void Tokenizer::Impl::bpe(const std::string& bytes, std::vector<TokenId>& out) const {
  struct Symbol {
    int32_t id;      // symbol id of the current text, -1 if it is no known string
    int32_t prev, next;
    uint32_t begin, n;  // byte span in `bytes`; n == 0 once merged into the left neighbour
  };
  struct Bigram {
    int32_t rank, left, right;
    int32_t left_id, right_id, result;
  };
  struct Later {  // lower rank first, then the leftmost
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };

  const auto n = static_cast<int32_t>(bytes.size());
  if (n == 0) return;
  const auto& byte_chars = unicode::byte_to_bpe_char();
  if (ignore_merges) {  // llama.cpp looks the whole byte-level piece up first
    std::string level;
    for (const char c : bytes) unicode::append_utf8(level, byte_chars[static_cast<uint8_t>(c)]);
    if (const auto it = id_of_text.find(level); it != id_of_text.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> sym(n);
  for (int32_t i = 0; i < n; ++i) {
    sym[i] = Symbol{byte_symbol[static_cast<uint8_t>(bytes[i])], i - 1, i + 1 < n ? i + 1 : -1,
                    static_cast<uint32_t>(i), 1};
  }
  std::vector<Bigram> storage;
  storage.reserve(n);
  std::priority_queue<Bigram, std::vector<Bigram>, Later> queue(Later{}, std::move(storage));
  auto add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
    const auto it = merges.find(pair_key(sym[l].id, sym[r].id));
    if (it == merges.end()) return;
    queue.push(Bigram{it->second.rank, l, r, sym[l].id, sym[r].id, it->second.result});
  };
  for (int32_t i = 1; i < n; ++i) add(i - 1, i);

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.n == 0 || r.n == 0 || l.id != b.left_id || r.id != b.right_id) continue;  // outdated
    l.id = b.result;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    add(l.prev, b.left);
    add(b.left, l.next);
  }

  for (int32_t i = 0; i != -1; i = sym[i].next) {
    const Symbol& s = sym[i];
    if (s.id >= 0 && s.id < n_vocab()) {
      out.push_back(s.id);
      continue;
    }
    // not a token: llama.cpp looks up each byte of the byte-level text as a one-byte token
    std::string level;
    for (uint32_t k = s.begin; k < s.begin + s.n; ++k) unicode::append_utf8(level, byte_chars[static_cast<uint8_t>(bytes[k])]);
    for (const char c : level) {
      if (auto it = id_of_text.find(std::string(1, c)); it != id_of_text.end()) out.push_back(it->second);
    }
  }
}

void Tokenizer::Impl::tokenize_fragment(std::string_view fragment, std::vector<TokenId>& out) const {
  std::vector<uint32_t> cps;
  unicode::decode_utf8_lenient(fragment, cps);
  std::vector<size_t> lengths;
  splitter.split(cps, lengths);
  std::string bytes;
  size_t start = 0;
  for (const size_t len : lengths) {
    bytes.clear();
    for (size_t i = start; i < start + len; ++i) unicode::append_utf8(bytes, cps[i]);
    start += len;
    bpe(bytes, out);
  }
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& v = *impl_;
  // 1. special-token partition (tokenizer_st_partition): fragments are text spans or token ids
  struct Fragment {
    TokenId id;  // -1 for text
    size_t offset, length;
  };
  std::vector<Fragment> fragments, next;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  for (const TokenId special : v.specials) {
    if (!parse_special && (v.attr[special] & (kAttrControl | kAttrUnknown))) continue;
    const std::string& needle = v.text[special];
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      size_t offset = f.offset, length = f.length;
      while (length > 0) {
        const size_t match = text.substr(0, offset + length).find(needle, offset);
        if (match == std::string_view::npos) break;
        if (match > offset) next.push_back({-1, offset, match - offset});
        next.push_back({special, 0, 0});
        const size_t end = match + needle.size();
        length = offset + length - end;
        offset = end;
      }
      if (length > 0) next.push_back({-1, offset, length});
    }
    fragments.swap(next);
  }

  // 2.-4. pre-tokenize and BPE each text fragment
  std::vector<TokenId> out;
  if (add_special && v.add_bos) out.push_back(v.bos);
  for (const Fragment& f : fragments) {
    if (f.id >= 0) {
      out.push_back(f.id);
    } else {
      v.tokenize_fragment(text.substr(f.offset, f.length), out);
    }
  }
  if (add_special && v.add_eos) out.push_back(v.eos);
  return out;
}

// ---- decoding ----

std::string Tokenizer::token_to_piece(TokenId id, bool render_special) const {
  const Impl& v = *impl_;
  if (id < 0 || id >= v.n_vocab()) return "";
  if (!render_special && (v.attr[id] & (kAttrControl | kAttrUnknown))) return "";
  return v.piece[id];
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool render_special) const {
  std::string out;
  for (const TokenId id : ids) out += token_to_piece(id, render_special);
  if (impl_->clean_spaces) clean_spaces(out);
  return out;
}

int32_t Tokenizer::n_vocab() const { return impl_->n_vocab(); }
TokenId Tokenizer::bos() const { return impl_->bos; }
TokenId Tokenizer::eos() const { return impl_->eos; }
bool Tokenizer::is_eog(TokenId id) const { return id >= 0 && id < impl_->n_vocab() && impl_->eog[id]; }
const std::string& Tokenizer::pre_tokenizer() const { return impl_->pre_name; }

const std::string& Tokenizer::token_text(TokenId id) const {
  static const std::string empty;
  return id >= 0 && id < impl_->n_vocab() ? impl_->text[id] : empty;
}

// ---- IncrementalDecoder ----

std::string IncrementalDecoder::push(TokenId id) {
  pending_ += tokenizer_->token_to_piece(id);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const int len = unicode::utf8_strict_length(pending_, i);
    if (len < 0) break;  // incomplete: wait for the next token
    if (len == 0) {
      unicode::append_utf8(out, unicode::kReplacement);
      i += 1;
    } else {
      out.append(pending_, i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string IncrementalDecoder::flush() {
  std::string out;
  if (!pending_.empty()) unicode::append_utf8(out, unicode::kReplacement);  // one truncated character
  pending_.clear();
  return out;
}

}  // namespace troupe
