// A small, strict JSON reader (and a string quoter for the few lines the runner writes).
//
// Why not a library: neither the ExecuTorch wheel nor the Android NDK ships a JSON parser, and
// the runner reads only two small documents (manifest.json, one request per line), so ~300
// lines here beat vendoring a dependency into both the desktop and the Gradle build.
//
// It reads what Python's json.dumps writes: RFC 8259 plus NaN / Infinity / -Infinity (Python
// emits those for non-finite floats). Anything else -- trailing commas, comments, duplicate
// keys, leading zeros, trailing text -- is an error naming the offset, so a damaged manifest
// is reported rather than half-read.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mtp_edge::json {

class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Raised by the typed accessors; `what()` names the key path the caller gave.
class TypeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Value {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  static Value parse(const std::string& text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; `what` names the value in the error message ("manifest k", "request seed").
  bool as_bool(const std::string& what) const;
  double as_double(const std::string& what) const;
  // Integers are read from the number's text, not through a double, so 64-bit seeds stay exact.
  int64_t as_int(const std::string& what) const;
  // A seed: any integer in [-2^63, 2^64), taken modulo 2^64 as Python's `seed & MASK64` does.
  uint64_t as_u64_wrapping(const std::string& what) const;
  const std::string& as_string(const std::string& what) const;
  const std::vector<Value>& as_array(const std::string& what) const;
  const std::vector<std::pair<std::string, Value>>& as_object(const std::string& what) const;

  // Object member lookup: nullptr when absent (or when this is not an object).
  const Value* find(const std::string& key) const;
  // Object member lookup that throws TypeError naming `what`.`key` when absent.
  const Value& at(const std::string& key, const std::string& what) const;

 private:
  friend class Parser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string text_;  // the string value, or a number's literal text
  std::vector<Value> array_;
  std::vector<std::pair<std::string, Value>> object_;
};

// `s` as a JSON string literal (quotes included).
std::string quote(const std::string& s);

// The shortest text that reads back as `d` (Python's repr: 0.7, 1.0, 1e-05), and NaN / Infinity
// / -Infinity as Python's json writes them.
std::string number(double d);

}  // namespace mtp_edge::json
