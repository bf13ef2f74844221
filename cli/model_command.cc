// `tandem model pull` and `tandem model info`.
#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "common/status_macros.h"
#include "engine/gguf_file.h"
#include "engine/model_config.h"
#include "engine/hf_model.h"
#include "engine/model_store.h"

namespace tandem::cli {
namespace {

absl::Status Info(const Args& args) {
  ASSIGN_OR_RETURN(std::string path, ModelPathFromArgs(args));
  ASSIGN_OR_RETURN(LoadedModel info, LoadModel(path, /*with_weights=*/false));
  const ModelConfig& config = info.config;
  std::printf("file:            %s\n", path.c_str());
  std::unique_ptr<GgufFile> gguf;
  if (IsHfModelDir(path)) {
    std::printf("format:          Hugging Face (config.json, safetensors, tokenizer.json)\n");
  } else {
    ASSIGN_OR_RETURN(gguf, GgufFile::Open(path));
    std::printf("gguf version:    %u, %zu tensors, %zu metadata keys\n", gguf->version(),
                gguf->tensors().size(), gguf->Keys().size());
  }
  std::printf("architecture:    %s\n", config.architecture.c_str());
  std::printf("layers:          %d\n", config.n_layers);
  std::printf("hidden:          %d\n", config.hidden);
  std::printf("heads / kv:      %d / %d (head dim %d)\n", config.n_heads, config.n_kv_heads,
              config.head_dim);
  std::printf("ffn:             %d\n", config.ffn_dim);
  std::printf("vocab:           %d\n", config.vocab_size);
  std::printf("context:         %d\n", config.context_length);
  std::printf("rope theta:      %g\n", config.rope_theta);
  std::printf("rms eps:         %g\n", config.rms_norm_eps);
  std::printf("tied embeddings: %s\n", config.tied_embeddings ? "yes" : "no");
  std::printf("rope layout:     %s\n",
              config.rope_layout == RopeLayout::kHalfSplit ? "halves (Hugging Face)"
                                                           : "adjacent pairs (GGUF)");
  if (args.Has("tensors") && gguf != nullptr) {
    for (const GgufTensorInfo& t : gguf->tensors()) {
      std::string dims;
      for (int64_t d : t.dims) dims += absl::StrFormat("%s%d", dims.empty() ? "" : " x ", d);
      std::printf("  %-28s %-6s %s\n", t.name.c_str(), GgmlTypeName(t.type).c_str(), dims.c_str());
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunModel(int argc, char** argv, int begin) {
  const std::vector<FlagSpec> specs = {
      {"model", false, "'default' or a GGUF path (info)"},
      {"tensors", true, "list the tensors (info)"},
  };
  absl::StatusOr<Args> args = Args::Parse(argc, argv, begin, specs);
  if (!args.ok()) return Fail(args.status());
  const std::string sub = args->positional().empty() ? "" : args->positional()[0];
  if (sub == "pull") {
    absl::Status status = PullDefaultModel(std::cerr);
    if (!status.ok()) return Fail(status);
    absl::StatusOr<std::string> path = ResolveModelPath("default");
    if (!path.ok()) return Fail(path.status());
    std::printf("%s\n", path->c_str());
    return 0;
  }
  if (sub == "info") {
    absl::Status status = Info(*args);
    return status.ok() ? 0 : Fail(status);
  }
  std::fprintf(stderr, "usage: tandem model pull | tandem model info [--model M] [--tensors]\n");
  return 2;
}

}  // namespace tandem::cli
