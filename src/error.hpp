// error.hpp: errors as values inside the engine.
//   ErrorKind  what went wrong, coarse enough for the HTTP layer to map onto a status code
//   Error      a kind plus a human-readable message
//   Expected<T> a T or an Error (C++20 has no std::expected)
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace troupe {

enum class ErrorKind {
  invalid_argument,  // the caller asked for something impossible (bad flag, bad parameter)
  invalid_model,     // a model file is malformed or unsupported
  io,                // a file could not be opened, read or mapped
  out_of_memory,     // a limit (context, KV blocks) was reached
  overloaded,        // the engine is full: try again later (HTTP 429 with Retry-After)
  unavailable,       // the part of the engine serving the request failed (a shard died): HTTP 503
  cancelled,         // the request was cancelled
  internal,          // a bug: should never be seen
};

const char* to_string(ErrorKind kind);

struct Error {
  ErrorKind kind = ErrorKind::internal;
  std::string message;
  double retry_after = 0;  // overloaded: seconds after which a retry is likely to be admitted
};

template <class T>
class Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}
  Expected(Error error) : v_(std::move(error)) {}

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Success or an Error.
template <>
class Expected<void> {
 public:
  Expected() = default;
  Expected(Error error) : error_(std::move(error)), ok_(false) {}

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace troupe
