#include "common/args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tandem {

absl::StatusOr<Args> Args::Parse(int argc, char** argv, int begin,
                                 const std::vector<FlagSpec>& specs) {
  Args args;
  for (int i = begin; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      args.positional_.emplace_back(arg);
      continue;
    }
    arg.remove_prefix(2);
    std::string name(arg);
    std::string value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = std::string(arg.substr(0, eq));
      value = std::string(arg.substr(eq + 1));
      has_value = true;
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& s : specs) {
      if (s.name == name) spec = &s;
    }
    if (spec == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (spec->is_bool) {
      if (!has_value) value = "true";
    } else if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    args.values_.emplace(name, value);
  }
  return args;
}

bool Args::Has(std::string_view name) const { return values_.find(name) != values_.end(); }

std::string Args::GetString(std::string_view name, std::string_view fallback) const {
  auto range = values_.equal_range(name);
  if (range.first == range.second) return std::string(fallback);
  return std::prev(range.second)->second;  // the last one wins
}

std::vector<std::string> Args::GetAll(std::string_view name) const {
  std::vector<std::string> out;
  auto range = values_.equal_range(name);
  for (auto it = range.first; it != range.second; ++it) out.push_back(it->second);
  return out;
}

absl::StatusOr<int64_t> Args::GetInt(std::string_view name, int64_t fallback) const {
  if (!Has(name)) return fallback;
  int64_t v;
  const std::string s = GetString(name);
  if (!absl::SimpleAtoi(s, &v)) {
    return absl::InvalidArgumentError(absl::StrFormat("--%s: '%s' is not an integer", name, s));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(std::string_view name, double fallback) const {
  if (!Has(name)) return fallback;
  double v;
  const std::string s = GetString(name);
  if (!absl::SimpleAtod(s, &v)) {
    return absl::InvalidArgumentError(absl::StrFormat("--%s: '%s' is not a number", name, s));
  }
  return v;
}

std::string Args::Usage(const std::vector<FlagSpec>& specs) {
  std::string out;
  for (const FlagSpec& s : specs) {
    absl::StrAppendFormat(&out, "  --%-16s %s\n", s.name + (s.is_bool ? "" : " V"), s.help);
  }
  return out;
}

}  // namespace tandem
