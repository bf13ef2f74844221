// A small command-line parser for tandem's commands and servers: `--name value`, `--name=value`,
// boolean `--name`, repeated flags, and positional words. Unknown flags are errors.
#ifndef TANDEM_COMMON_ARGS_H_
#define TANDEM_COMMON_ARGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem {

struct FlagSpec {
  std::string name;  // without the dashes
  bool is_bool = false;
  std::string help;
};

class Args {
 public:
  // Parses argv[begin, argc) against `specs`.
  static absl::StatusOr<Args> Parse(int argc, char** argv, int begin,
                                    const std::vector<FlagSpec>& specs);

  bool Has(std::string_view name) const;
  std::string GetString(std::string_view name, std::string_view fallback = "") const;
  std::vector<std::string> GetAll(std::string_view name) const;
  // INVALID_ARGUMENT naming the flag when the value is not a number.
  absl::StatusOr<int64_t> GetInt(std::string_view name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(std::string_view name, double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

  static std::string Usage(const std::vector<FlagSpec>& specs);

 private:
  std::multimap<std::string, std::string, std::less<>> values_;
  std::vector<std::string> positional_;
};

}  // namespace tandem

#endif  // TANDEM_COMMON_ARGS_H_
