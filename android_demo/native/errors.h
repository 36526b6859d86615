// The one exception type the runner throws. Its message is meant for a person: it names the
// problem and the fix, in the same words as the Python runtime where both check the same thing.
// It never crosses the C API (mtp_edge_runner.h), which turns it into an error string.
#pragma once

#include <stdexcept>
#include <string>

namespace mtp_edge {

class RunnerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace mtp_edge
