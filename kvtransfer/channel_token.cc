#include "kvtransfer/channel_token.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace tandem {
bool ChannelTokenEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  volatile unsigned char diff = 0;  // volatile: no early-exit memcmp
  for (size_t i = 0; i < a.size(); ++i) diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

absl::StatusOr<std::string> NewChannelToken() {
  std::string token(kChannelTokenBytes, '\0');
  size_t filled = 0;
  while (filled < token.size()) {
    const ssize_t n = getrandom(token.data() + filled, token.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    filled += static_cast<size_t>(n);
  }
  return token;
}

absl::Status PresentChannelToken(TcpTransport& transport, std::string_view token,
                                 absl::Time deadline) {
  return transport.Send(token.data(), static_cast<int64_t>(token.size()), deadline);
}

absl::StatusOr<std::unique_ptr<TcpTransport>> AcceptWithChannelToken(
    TcpTransportListener& listener, std::string_view token, absl::Time deadline,
    absl::Duration token_timeout) {
  while (true) {
    absl::StatusOr<std::unique_ptr<TcpTransport>> transport = listener.Accept(deadline);
    if (!transport.ok()) return transport.status();
    std::string presented(token.size(), '\0');
    absl::Status status = (*transport)->Recv(presented.data(),
                                             static_cast<int64_t>(presented.size()),
                                             std::min(deadline, absl::Now() + token_timeout));
    if (status.ok() && ChannelTokenEquals(presented, token)) return transport;
    LOG(WARNING) << "KV data connection " << (*transport)->description()
                 << " closed: it did not present the channel's token"
                 << (status.ok() ? "" : absl::StrCat(" (", status.message(), ")"));
    (*transport)->Close();
  }
}

}  // namespace tandem
