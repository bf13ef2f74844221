#include "engine/hf_model.h"

#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <optional>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat("cannot read ", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view what) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(Cat(what, " is not a JSON object"));
  }
  return j;
}

// An integer field; `fallback` when absent (nullopt: required).
absl::StatusOr<int64_t> IntField(const json& j, const char* key, std::optional<int64_t> fallback,
                                 std::string_view what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback.has_value()) return *fallback;
    return absl::InvalidArgumentError(Cat(what, ": '", key, "' is missing"));
  }
  if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > (1ll << 31)) {
    return absl::InvalidArgumentError(Cat(what, ": '", key, "' is not a count"));
  }
  return it->get<int64_t>();
}

absl::StatusOr<double> FloatField(const json& j, const char* key, double fallback,
                                  std::string_view what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) return absl::InvalidArgumentError(Cat(what, ": '", key, "' is not a number"));
  return it->get<double>();
}

// A special token named in tokenizer_config.json: "text" or {"content": "text", ...}.
std::optional<std::string> TokenText(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

// The pre-tokenizer kinds the Tokenizer implements, recognized by structure.
absl::StatusOr<std::string> PreTokenizerName(const json& pre) {
  auto byte_level = [](const json& p) {
    return p.is_object() && p.value("type", "") == "ByteLevel" && p.value("use_regex", true);
  };
  if (pre.is_null() || byte_level(pre)) return std::string("gpt2");
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
      pre["pretokenizers"].is_array() && pre["pretokenizers"].size() == 2) {
    const json& a = pre["pretokenizers"][0];
    if (a.is_object() && a.value("type", "") == "Digits" && a.value("individual_digits", false) &&
        byte_level(pre["pretokenizers"][1])) {
      return std::string("smollm");
    }
  }
  return absl::UnimplementedError(
      Cat("tokenizer.json pre_tokenizer ", pre.dump().substr(0, 200),
          " is not supported: byte-level BPE with the GPT-2 pattern, optionally after "
          "Digits(individual_digits), is"));
}

}  // namespace

bool IsHfModelDir(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::is_regular_file(fs::path(path) / "config.json", ec);
}

absl::StatusOr<ModelConfig> ModelConfigFromHfConfig(std::string_view config_json,
                                                    std::string_view fallback_name) {
  constexpr std::string_view kWhat = "config.json";
  ASSIGN_OR_RETURN(const json j, ParseJson(config_json, kWhat));
  std::string arch = j.value("model_type", "");
  if (j.contains("architectures") && j["architectures"].is_array() &&
      !j["architectures"].empty() && j["architectures"][0].is_string()) {
    const std::string a = j["architectures"][0].get<std::string>();
    if (a == "LlamaForCausalLM") arch = "llama";
    if (a == "MistralForCausalLM") arch = "mistral";
  }
  if (arch != "llama" && arch != "mistral") {
    return absl::UnimplementedError(
        Cat(kWhat, ": model type '", arch, "' is not supported (llama and mistral are)"));
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return absl::UnimplementedError(
        Cat(kWhat, ": rope_scaling ", j["rope_scaling"].dump(), " is not supported"));
  }
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    if (j.value(bias, false)) {
      return absl::UnimplementedError(Cat(kWhat, ": ", bias, " is not supported"));
    }
  }
  const std::string act = j.value("hidden_act", "silu");
  if (act != "silu") {
    return absl::UnimplementedError(Cat(kWhat, ": hidden_act '", act, "' is not supported"));
  }
  ModelConfig c;
  c.architecture = "llama";  // mistral is the same graph here (no sliding window)
  c.name = j.value("_name_or_path", std::string(fallback_name));
  if (c.name.empty()) c.name = std::string(fallback_name);
  ASSIGN_OR_RETURN(const int64_t layers, IntField(j, "num_hidden_layers", std::nullopt, kWhat));
  ASSIGN_OR_RETURN(const int64_t hidden, IntField(j, "hidden_size", std::nullopt, kWhat));
  ASSIGN_OR_RETURN(const int64_t heads, IntField(j, "num_attention_heads", std::nullopt, kWhat));
  ASSIGN_OR_RETURN(const int64_t kv_heads, IntField(j, "num_key_value_heads", heads, kWhat));
  ASSIGN_OR_RETURN(const int64_t head_dim,
                   IntField(j, "head_dim", heads > 0 ? hidden / heads : 0, kWhat));
  ASSIGN_OR_RETURN(const int64_t ffn, IntField(j, "intermediate_size", std::nullopt, kWhat));
  ASSIGN_OR_RETURN(const int64_t vocab, IntField(j, "vocab_size", std::nullopt, kWhat));
  ASSIGN_OR_RETURN(const int64_t context,
                   IntField(j, "max_position_embeddings", std::nullopt, kWhat));
  ASSIGN_OR_RETURN(const double theta, FloatField(j, "rope_theta", 10000.0, kWhat));
  ASSIGN_OR_RETURN(const double eps, FloatField(j, "rms_norm_eps", 1e-6, kWhat));
  c.n_layers = static_cast<int>(layers);
  c.hidden = static_cast<int>(hidden);
  c.n_heads = static_cast<int>(heads);
  c.n_kv_heads = static_cast<int>(kv_heads);
  c.head_dim = static_cast<int>(head_dim);
  c.ffn_dim = static_cast<int>(ffn);
  c.vocab_size = static_cast<int>(vocab);
  c.context_length = static_cast<int>(context);
  c.rope_theta = static_cast<float>(theta);
  c.rms_norm_eps = static_cast<float>(eps);
  c.tied_embeddings = j.value("tie_word_embeddings", false);
  c.rope_layout = RopeLayout::kHalfSplit;
  if (absl::Status s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(Cat(kWhat, ": ", s.message()));
  }
  return c;
}

absl::StatusOr<TokenizerData> TokenizerDataFromHf(std::string_view tokenizer_json,
                                                  std::string_view tokenizer_config_json,
                                                  std::string_view config_json) {
  constexpr std::string_view kWhat = "tokenizer.json";
  ASSIGN_OR_RETURN(const json t, ParseJson(tokenizer_json, kWhat));
  json cfg = json::object();
  if (!tokenizer_config_json.empty()) {
    ASSIGN_OR_RETURN(cfg, ParseJson(tokenizer_config_json, "tokenizer_config.json"));
  }
  json model_cfg = json::object();
  if (!config_json.empty()) {
    ASSIGN_OR_RETURN(model_cfg, ParseJson(config_json, "config.json"));
  }
  if (!t.contains("model") || !t["model"].is_object() || t["model"].value("type", "") != "BPE") {
    return absl::UnimplementedError(Cat(kWhat, ": only BPE models are supported"));
  }
  if (t.contains("normalizer") && !t["normalizer"].is_null()) {
    return absl::UnimplementedError(Cat(kWhat, ": normalizer ", t["normalizer"].dump().substr(0, 120),
                                        " is not supported"));
  }
  if (t.contains("decoder") && !t["decoder"].is_null() &&
      t["decoder"].value("type", "") != "ByteLevel") {
    return absl::UnimplementedError(Cat(kWhat, ": only the ByteLevel decoder is supported"));
  }
  TokenizerData data;
  data.model = "gpt2";
  ASSIGN_OR_RETURN(data.pre, PreTokenizerName(t.value("pre_tokenizer", json())));

  const json& model = t["model"];
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(Cat(kWhat, ": model.vocab is missing"));
  }
  // Ids: the vocabulary, then added tokens (which may repeat vocabulary entries).
  std::map<int64_t, std::string> by_id;
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 24)) {
      return absl::InvalidArgumentError(Cat(kWhat, ": vocab entry '", text, "' has a bad id"));
    }
    by_id[id.get<int64_t>()] = text;
  }
  std::map<int64_t, TokenType> types;
  if (t.contains("added_tokens") && t["added_tokens"].is_array()) {
    for (const json& a : t["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string() || a["id"].get<int64_t>() < 0 ||
          a["id"].get<int64_t>() >= (1 << 24)) {
        return absl::InvalidArgumentError(Cat(kWhat, ": a malformed added_tokens entry"));
      }
      const int64_t id = a["id"].get<int64_t>();
      by_id[id] = a["content"].get<std::string>();
      types[id] = a.value("special", false) ? TokenType::kControl : TokenType::kUserDefined;
    }
  }
  if (by_id.empty()) return absl::InvalidArgumentError(Cat(kWhat, ": the vocabulary is empty"));
  const int64_t n = by_id.rbegin()->first + 1;
  if (static_cast<int64_t>(by_id.size()) != n) {
    return absl::InvalidArgumentError(
        Cat(kWhat, ": token ids are not contiguous (", by_id.size(), " tokens, largest id ",
            n - 1, ")"));
  }
  data.tokens.reserve(n);
  data.token_types.reserve(n);
  for (const auto& [id, text] : by_id) {
    data.tokens.push_back(text);
    auto it = types.find(id);
    data.token_types.push_back(static_cast<int32_t>(it == types.end() ? TokenType::kNormal : it->second));
  }
  if (model.contains("merges") && model["merges"].is_array()) {
    data.merges.reserve(model["merges"].size());
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        data.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        data.merges.push_back(Cat(m[0].get<std::string>(), " ", m[1].get<std::string>()));
      } else {
        return absl::InvalidArgumentError(Cat(kWhat, ": a malformed merge"));
      }
    }
  }
  auto id_of = [&](const char* key, const char* config_key) -> int32_t {
    if (std::optional<std::string> text = TokenText(cfg, key); text.has_value()) {
      for (const auto& [id, tok] : by_id) {
        if (tok == *text) return static_cast<int32_t>(id);
      }
    }
    if (config_key != nullptr && model_cfg.contains(config_key) &&
        model_cfg[config_key].is_number_integer()) {
      const int64_t id = model_cfg[config_key].get<int64_t>();
      if (id >= 0 && id < n) return static_cast<int32_t>(id);
    }
    return -1;
  };
  data.bos_id = id_of("bos_token", "bos_token_id");
  data.eos_id = id_of("eos_token", "eos_token_id");
  data.unk_id = id_of("unk_token", nullptr);
  data.pad_id = id_of("pad_token", "pad_token_id");
  data.add_bos = cfg.value("add_bos_token", false);
  return data;
}

absl::StatusOr<LoadedModel> LoadHfModel(const std::string& dir, bool with_weights) {
  const fs::path root(dir);
  auto in_dir = [&](const absl::Status& s) {
    return absl::Status(s.code(), Cat(dir, ": ", s.message()));
  };
  ASSIGN_OR_RETURN(const std::string config_json, ReadFile(root / "config.json"));
  LoadedModel model;
  {
    absl::StatusOr<ModelConfig> c =
        ModelConfigFromHfConfig(config_json, root.filename().string());
    if (!c.ok()) return in_dir(c.status());
    model.config = *std::move(c);
  }
  absl::StatusOr<std::string> tokenizer_json = ReadFile(root / "tokenizer.json");
  if (!tokenizer_json.ok()) return in_dir(tokenizer_json.status());
  const std::string tokenizer_config =
      fs::exists(root / "tokenizer_config.json")
          ? ReadFile(root / "tokenizer_config.json").value_or("")
          : "";
  {
    absl::StatusOr<TokenizerData> data =
        TokenizerDataFromHf(*tokenizer_json, tokenizer_config, config_json);
    if (!data.ok()) return in_dir(data.status());
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromData(*std::move(data));
    if (!tok.ok()) return in_dir(tok.status());
    model.tokenizer = *std::move(tok);
  }
  if (model.tokenizer->vocab_size() > model.config.vocab_size) {
    return absl::InvalidArgumentError(Cat(dir, ": the tokenizer has ",
                                          model.tokenizer->vocab_size(), " tokens, the model ",
                                          model.config.vocab_size));
  }
  // The chat template: tokenizer_config.json's, else chat_template.jinja.
  std::string chat;
  if (!tokenizer_config.empty()) {
    const json cfg = json::parse(tokenizer_config, nullptr, false);
    if (cfg.is_object() && cfg.contains("chat_template") && cfg["chat_template"].is_string()) {
      chat = cfg["chat_template"].get<std::string>();
    }
  }
  if (chat.empty() && fs::exists(root / "chat_template.jinja")) {
    chat = ReadFile(root / "chat_template.jinja").value_or("");
  }
  if (chat.empty()) {
    model.chat_template_error = absl::NotFoundError(
        Cat(dir, ": neither tokenizer_config.json nor chat_template.jinja has a chat template"));
  } else if (absl::StatusOr<ChatTemplate> t = ChatTemplate::FromTemplateString(chat); t.ok()) {
    model.chat_template = std::make_unique<ChatTemplate>(*std::move(t));
  } else {
    model.chat_template_error = t.status();
  }
  if (!with_weights) return model;

  // One file, or the shards an index names.
  std::vector<std::string> shards;
  if (fs::exists(root / "model.safetensors.index.json")) {
    ASSIGN_OR_RETURN(const std::string index_text, ReadFile(root / "model.safetensors.index.json"));
    absl::StatusOr<json> index = ParseJson(index_text, "model.safetensors.index.json");
    if (!index.ok()) return in_dir(index.status());
    if (!index->contains("weight_map") || !(*index)["weight_map"].is_object()) {
      return absl::InvalidArgumentError(Cat(dir, ": model.safetensors.index.json has no weight_map"));
    }
    std::set<std::string> files;
    for (const auto& [name, file] : (*index)["weight_map"].items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
        return absl::InvalidArgumentError(Cat(dir, ": weight_map entry '", name, "' is bad"));
      }
      files.insert(file.get<std::string>());
    }
    shards.assign(files.begin(), files.end());
  } else {
    shards.push_back("model.safetensors");
  }
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  for (const std::string& shard : shards) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f,
                     SafetensorsFile::Open((root / shard).string()));
    files.push_back(std::move(f));
  }
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights =
      ModelWeights::FromSafetensors(model.config, std::move(files));
  if (!weights.ok()) return in_dir(weights.status());
  model.weights = *std::move(weights);
  return model;
}

}  // namespace tandem
