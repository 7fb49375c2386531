// The default model, loaded once for every test that needs the real weights.
#pragma once

#include <doctest/doctest.h>

#include <memory>

#include "model.hpp"
#include "test_util.hpp"

namespace troupe::test {

inline std::shared_ptr<const Model> real_model() {
  static std::shared_ptr<const Model> m = [] {
    auto file = GgufFile::open(model_path());
    REQUIRE_MESSAGE(file.has_value(), "default model missing: run scripts/fetch-model.sh");
    auto model = Model::load(*file);
    REQUIRE(model.has_value());
    return *model;
  }();
  return m;
}

}  // namespace troupe::test
