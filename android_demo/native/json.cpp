#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <vector>

namespace mtp_edge::json {

namespace {

// Deep enough for any manifest; a hostile line is refused before it costs anything.
constexpr int kMaxDepth = 128;

std::string without_tag(const char* what) {
  // "[json.exception.parse_error.101] parse error at ..." -> "parse error at ..."
  std::string s = what;
  if (!s.empty() && s[0] == '[') {
    const size_t end = s.find("] ");
    if (end != std::string::npos) s.erase(0, end + 2);
  }
  return s;
}

// The digits of an integral double (exact for 2^64 and the like).
std::string integral_text(double d) {
  char buf[400];
  std::snprintf(buf, sizeof(buf), "%.0f", d);
  return buf;
}

// nlohmann reads an integer literal outside [-2^63, 2^64) as a float: such a float (or a float
// literal as large, which reads the same) is an integer that does not fit, not a fraction.
bool integer_beyond_64_bits(double d) { return std::isfinite(d) && (d >= 0x1p64 || d <= -0x1p63); }

}  // namespace

Json parse(const std::string& text) {
  // The callback sees every container and key as it is read: it counts the depth and keeps each
  // open object's keys, to refuse a duplicate (nlohmann would keep the last one).
  std::vector<std::set<std::string>> open_objects;
  int depth = 0;
  auto check = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (++depth > kMaxDepth) throw ParseError("JSON nested too deeply (more than " + std::to_string(kMaxDepth) + " levels)");
        if (event == Json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        open_objects.pop_back();
        --depth;
        break;
      case Json::parse_event_t::array_end:
        --depth;
        break;
      case Json::parse_event_t::key:
        if (!open_objects.back().insert(parsed.get_ref<const std::string&>()).second) {
          throw ParseError("duplicate key \"" + parsed.get_ref<const std::string&>() + "\"");
        }
        break;
      case Json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text, check);
  } catch (const Json::parse_error& e) {
    throw ParseError(without_tag(e.what()));
  }
}

const char* type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "a number";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    default: return "?";
  }
}

namespace {
void expect(bool ok, const Json& v, const char* type, const std::string& what) {
  if (!ok) throw TypeError(what + " must be " + type + ", got " + type_name(v));
}
}  // namespace

bool as_bool(const Json& v, const std::string& what) {
  expect(v.is_boolean(), v, "a boolean", what);
  return v.get<bool>();
}

double as_double(const Json& v, const std::string& what) {
  expect(v.is_number(), v, "a number", what);
  return v.get<double>();
}

int64_t as_int(const Json& v, const std::string& what) {
  expect(v.is_number(), v, "a number", what);
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) throw TypeError(what + " = " + std::to_string(u) + " does not fit in 64 bits");
    return static_cast<int64_t>(u);
  }
  const double d = v.get<double>();
  if (integer_beyond_64_bits(d)) {
    throw TypeError(d > 0 ? what + " = " + integral_text(d) + " does not fit in 64 bits" : what + " is below -2^63: it does not fit in 64 bits");
  }
  throw TypeError(what + " must be an integer, got " + number(d));
}

uint64_t as_u64_wrapping(const Json& v, const std::string& what) {
  expect(v.is_number(), v, "a number", what);
  // Two's complement: a negative seed has the same bits as Python's `seed & MASK64`.
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) return static_cast<uint64_t>(v.get<int64_t>());
  const double d = v.get<double>();
  if (integer_beyond_64_bits(d)) throw TypeError(d > 0 ? what + " = " + integral_text(d) + " is 2^64 or more" : what + " is below -2^63");
  throw TypeError(what + " must be an integer, got " + number(d));
}

const std::string& as_string(const Json& v, const std::string& what) {
  expect(v.is_string(), v, "a string", what);
  return v.get_ref<const std::string&>();
}

const Json::array_t& as_array(const Json& v, const std::string& what) {
  expect(v.is_array(), v, "an array", what);
  return v.get_ref<const Json::array_t&>();
}

const Json& as_object(const Json& v, const std::string& what) {
  expect(v.is_object(), v, "an object", what);
  return v;
}

const Json* find(const Json& v, const std::string& key) {
  if (!v.is_object()) return nullptr;
  const auto it = v.find(key);
  return it == v.end() ? nullptr : &*it;
}

const Json& at(const Json& v, const std::string& key, const std::string& what) {
  as_object(v, what);
  const Json* member = find(v, key);
  if (member == nullptr) throw TypeError(what + " has no \"" + key + "\"");
  return *member;
}

std::string quote(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string number(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  // %g writes an exponent from 10^precision on, Python's repr from 1e16 on: 1000.0, not 1e+03 (a
  // number with its exponent at or above its digit count is whole).
  const size_t e = s.find('e');
  if (e != std::string::npos) {
    const int exponent = std::atoi(s.c_str() + e + 1);
    if (exponent >= 0 && exponent < 16) {
      std::snprintf(buf, sizeof(buf), "%.0f", d);
      s = buf;
    }
  }
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // 1 -> 1.0, as Python prints a float
  return s;
}

}  // namespace mtp_edge::json
