// Minimal logging and CHECKs. The abseil release in Debian 12 predates absl/log, so tandem
// carries these few macros. CHECKs stay on in Release builds: a broken invariant aborts with
// the values that broke it instead of corrupting memory.
#ifndef TANDEM_COMMON_LOGGING_H_
#define TANDEM_COMMON_LOGGING_H_

#include <sstream>
#include <string>

namespace tandem {

enum class LogSeverity { kInfo = 0, kWarning = 1, kError = 2, kFatal = 3 };

// Messages below this severity are dropped. Set from TANDEM_LOG_LEVEL (info, warning,
// error) on first use; SetMinLogSeverity overrides it.
LogSeverity MinLogSeverity();
void SetMinLogSeverity(LogSeverity severity);

namespace internal {

class LogMessage {
 public:
  LogMessage(const char* file, int line, LogSeverity severity);
  ~LogMessage();  // Writes the line to stderr; aborts for kFatal.
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows the stream expression when a CHECK passes or a level is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace tandem

#define TANDEM_LOG_SEVERITY_INFO ::tandem::LogSeverity::kInfo
#define TANDEM_LOG_SEVERITY_WARNING ::tandem::LogSeverity::kWarning
#define TANDEM_LOG_SEVERITY_ERROR ::tandem::LogSeverity::kError
#define TANDEM_LOG_SEVERITY_FATAL ::tandem::LogSeverity::kFatal

#define LOG(level)                                                      \
  !(TANDEM_LOG_SEVERITY_##level >= ::tandem::MinLogSeverity())          \
      ? (void)0                                                         \
      : ::tandem::internal::LogVoidify() &                              \
            ::tandem::internal::LogMessage(__FILE__, __LINE__,          \
                                           TANDEM_LOG_SEVERITY_##level) \
                .stream()

#define CHECK(cond)                                                                    \
  (cond) ? (void)0                                                                     \
         : ::tandem::internal::LogVoidify() &                                          \
               ::tandem::internal::LogMessage(__FILE__, __LINE__,                      \
                                              ::tandem::LogSeverity::kFatal)           \
                       .stream()                                                       \
                   << "CHECK failed: " #cond " "

#define TANDEM_CHECK_OP_(a, b, op)                                                         \
  ((a)op(b)) ? (void)0                                                                     \
             : ::tandem::internal::LogVoidify() &                                          \
                   ::tandem::internal::LogMessage(__FILE__, __LINE__,                      \
                                                  ::tandem::LogSeverity::kFatal)           \
                           .stream()                                                       \
                       << "CHECK failed: " #a " " #op " " #b " (" << (a) << " vs " << (b) \
                       << ") "

#define CHECK_EQ(a, b) TANDEM_CHECK_OP_(a, b, ==)
#define CHECK_NE(a, b) TANDEM_CHECK_OP_(a, b, !=)
#define CHECK_LT(a, b) TANDEM_CHECK_OP_(a, b, <)
#define CHECK_LE(a, b) TANDEM_CHECK_OP_(a, b, <=)
#define CHECK_GT(a, b) TANDEM_CHECK_OP_(a, b, >)
#define CHECK_GE(a, b) TANDEM_CHECK_OP_(a, b, >=)
#define CHECK_OK(expr)                                                           \
  do {                                                                           \
    const auto& tandem_check_status_ = (expr);                                   \
    CHECK(tandem_check_status_.ok()) << #expr << ": " << tandem_check_status_;   \
  } while (0)

#endif  // TANDEM_COMMON_LOGGING_H_
