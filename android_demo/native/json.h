// JSON in the runner: nlohmann/json (vendored in third_party/nlohmann_json, the JSON library the
// tokenizer needs anyway) reads manifest.json, request lines and cost tables. This header adds the
// little the runner needs on top of it:
//
// - parse(): strict reading. nlohmann already refuses what RFC 8259 does (trailing commas,
//   comments, leading zeros, trailing text, invalid UTF-8, lone surrogates); parse() also refuses
//   duplicate keys (nlohmann would keep the last one silently) and nesting deeper than 128. Python's
//   non-standard NaN / Infinity are refused too: no manifest, request or cost-table field holds a
//   non-finite number. Objects keep their members in document order (nlohmann::ordered_json), so an
//   error names the first unknown field as written.
// - typed access that names the value in its error ("request seed must be an integer, got 1.5"),
//   where nlohmann's own type errors name no field;
// - quote() and number(), the writers of the few lines the runner prints (see below why not dump()).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace mtp_edge::json {

using Json = nlohmann::ordered_json;

// A malformed document; `what()` is nlohmann's message without its "[json.exception...]" tag
// ("parse error at line 1, column 9: syntax error while parsing object key - unexpected '}'; ...").
class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Raised by the typed accessors; `what()` names the key path the caller gave.
class TypeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Json parse(const std::string& text);

// "null", "a boolean", "a number", "a string", "an array", "an object".
const char* type_name(const Json& v);

// Typed access; `what` names the value in the error message ("manifest k", "request seed").
bool as_bool(const Json& v, const std::string& what);
double as_double(const Json& v, const std::string& what);
// An integer literal (nlohmann keeps it exact in 64 bits); a fraction or exponent is refused.
int64_t as_int(const Json& v, const std::string& what);
// A seed: any integer in [-2^63, 2^64), taken modulo 2^64 as Python's `seed & MASK64` does.
uint64_t as_u64_wrapping(const Json& v, const std::string& what);
const std::string& as_string(const Json& v, const std::string& what);
const Json::array_t& as_array(const Json& v, const std::string& what);
// `v` itself, checked to be an object (iterate with .items(): document order).
const Json& as_object(const Json& v, const std::string& what);

// Object member lookup: nullptr when absent (or when `v` is not an object).
const Json* find(const Json& v, const std::string& key);
// Object member lookup that throws TypeError naming `what` and `key` when absent.
const Json& at(const Json& v, const std::string& key, const std::string& what);

// Writers, kept as two small functions rather than building documents for nlohmann's dump(): the
// result and stats lines are assembled field by field in json.dumps' layout (", " and ": "
// separators, which dump() does not write), and they carry non-finite floats as Python writes them
// (NaN, Infinity), where dump() writes null, which Python would read back as None.
//
// `s` as a JSON string literal (quotes included; UTF-8 passed through as json.dumps(ensure_ascii=False)).
std::string quote(const std::string& s);
// The shortest text that reads back as `d` (Python's repr: 0.7, 1.0, 1e-05), and NaN / Infinity
// / -Infinity as Python's json writes them.
std::string number(double d);

}  // namespace mtp_edge::json
