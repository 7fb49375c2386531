#include "error.hpp"

namespace troupe {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::invalid_model: return "invalid_model";
    case ErrorKind::io: return "io";
    case ErrorKind::out_of_memory: return "out_of_memory";
    case ErrorKind::overloaded: return "overloaded";
    case ErrorKind::unavailable: return "unavailable";
    case ErrorKind::cancelled: return "cancelled";
    case ErrorKind::internal: return "internal";
  }
  return "unknown";
}

}  // namespace troupe
