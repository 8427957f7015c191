/*
 * dmlc/logging.h for a T-MAC kernel kit written by tmac-convert: the small part of dmlc-core's logging
 * interface that T-MAC's llama.cpp fork and the kit's wrapper use (no TVM, no dmlc-core needed).
 *
 *   LOG(INFO|WARNING|ERROR|FATAL) << ...;  DLOG(...)  CHECK(cond) << ...;  CHECK_EQ/NE/LT/LE/GT/GE(a, b)
 *   DCHECK(...) and DCHECK_xx (active only without NDEBUG), LOG_IF(sev, cond), ICHECK (= CHECK)
 *
 * Messages go to stderr, one line each.  LOG(FATAL) and a failed CHECK print the message and end the
 * process with abort() (exit status non-zero).  TMAC_LOG_LEVEL=WARNING (or ERROR) hides INFO lines.
 */
#ifndef TMAC_KIT_DMLC_LOGGING_H_
#define TMAC_KIT_DMLC_LOGGING_H_

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

namespace dmlc {

enum LogSeverity { log_INFO = 0, log_WARNING = 1, log_ERROR = 2, log_FATAL = 3 };

inline int MinLogLevel() {
  static const int level = [] {
    const char* v = std::getenv("TMAC_LOG_LEVEL");
    if (v == nullptr) return 0;
    if (std::strcmp(v, "WARNING") == 0 || std::strcmp(v, "warning") == 0) return 1;
    if (std::strcmp(v, "ERROR") == 0 || std::strcmp(v, "error") == 0) return 2;
    return 0;
  }();
  return level;
}

class LogMessage {
 public:
  LogMessage(const char* file, int line, int severity) : severity_(severity) {
    static const char* const names[] = {"INFO", "WARNING", "ERROR", "FATAL"};
    const char* base = std::strrchr(file, '/');
    stream_ << "[" << names[severity] << "] " << (base ? base + 1 : file) << ":" << line << ": ";
  }
  ~LogMessage() {
    if (severity_ >= MinLogLevel() || severity_ == log_FATAL) {
      stream_ << "\n";
      const std::string s = stream_.str();
      std::fwrite(s.data(), 1, s.size(), stderr);
      std::fflush(stderr);
    }
    if (severity_ == log_FATAL) std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
  int severity_;
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
};

// Lets `cond ? (void)0 : LogMessageVoidify() & LOG(...) << x` be an expression of type void.
class LogMessageVoidify {
 public:
  void operator&(std::ostream&) {}
};

}  // namespace dmlc

#define LOG(severity) ::dmlc::LogMessage(__FILE__, __LINE__, ::dmlc::log_##severity).stream()
#define LOG_IF(severity, condition) \
  !(condition) ? (void)0 : ::dmlc::LogMessageVoidify() & LOG(severity)
#define CHECK(condition) \
  (condition) ? (void)0 : ::dmlc::LogMessageVoidify() & LOG(FATAL) << "Check failed: " #condition ": "
#define TMAC_KIT_CHECK_OP(a, b, op) \
  ((a)op(b)) ? (void)0 : ::dmlc::LogMessageVoidify() & LOG(FATAL) << "Check failed: " #a " " #op " " #b \
                                                                   << " (" << (a) << " vs. " << (b) << "): "
#define CHECK_EQ(a, b) TMAC_KIT_CHECK_OP(a, b, ==)
#define CHECK_NE(a, b) TMAC_KIT_CHECK_OP(a, b, !=)
#define CHECK_LT(a, b) TMAC_KIT_CHECK_OP(a, b, <)
#define CHECK_LE(a, b) TMAC_KIT_CHECK_OP(a, b, <=)
#define CHECK_GT(a, b) TMAC_KIT_CHECK_OP(a, b, >)
#define CHECK_GE(a, b) TMAC_KIT_CHECK_OP(a, b, >=)
#define CHECK_NOTNULL(x) ((x) == nullptr ? (LOG(FATAL) << "Check notnull: " #x, (x)) : (x))
#define ICHECK CHECK

#ifdef NDEBUG
#define DLOG(severity) \
  true ? (void)0 : ::dmlc::LogMessageVoidify() & LOG(severity)
#define DCHECK(condition) \
  true ? (void)0 : ::dmlc::LogMessageVoidify() & LOG(FATAL) << #condition
#define TMAC_KIT_DCHECK_OP(a, b, op) \
  true ? (void)0 : ::dmlc::LogMessageVoidify() & LOG(FATAL) << ((a)op(b))
#else
#define DLOG(severity) LOG(severity)
#define DCHECK(condition) CHECK(condition)
#define TMAC_KIT_DCHECK_OP(a, b, op) TMAC_KIT_CHECK_OP(a, b, op)
#endif
#define DCHECK_EQ(a, b) TMAC_KIT_DCHECK_OP(a, b, ==)
#define DCHECK_NE(a, b) TMAC_KIT_DCHECK_OP(a, b, !=)
#define DCHECK_LT(a, b) TMAC_KIT_DCHECK_OP(a, b, <)
#define DCHECK_LE(a, b) TMAC_KIT_DCHECK_OP(a, b, <=)
#define DCHECK_GT(a, b) TMAC_KIT_DCHECK_OP(a, b, >)
#define DCHECK_GE(a, b) TMAC_KIT_DCHECK_OP(a, b, >=)

#endif  // TMAC_KIT_DMLC_LOGGING_H_
