// String helpers shared across modules.
#ifndef TANDEM_COMMON_STRINGS_H_
#define TANDEM_COMMON_STRINGS_H_

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tandem {
namespace strings_internal {

// NOTE: Debian 12's abseil (20220623) is built with its own absl::string_view, which
// absl::StrCat does not accept a std::string_view for; convert at the call.
inline absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }
template <typename T>
const T& ToAbsl(const T& v) {
  return v;
}

}  // namespace strings_internal

// absl::StrCat that also takes std::string_view.
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(strings_internal::ToAbsl(args)...);
}

// "host:port", with an IPv6 host in brackets ("[::1]:50051") unless it has them already.
inline std::string HostPort(std::string_view host, int port) {
  if (host.find(':') != std::string_view::npos && !host.starts_with('[')) {
    return Cat("[", host, "]:", port);
  }
  return Cat(host, ":", port);
}

}  // namespace tandem

#endif  // TANDEM_COMMON_STRINGS_H_
