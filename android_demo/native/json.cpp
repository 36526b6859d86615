#include "json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace mtp_edge::json {

namespace {
// Deep enough for any manifest; stops a hostile line from overflowing the stack.
constexpr int kMaxDepth = 128;
}  // namespace

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& why) const {
    throw ParseError(why + " at offset " + std::to_string(pos_));
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool consume_literal(const char* lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (s_.compare(pos_, n, lit) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("JSON nested too deeply");
    if (pos_ >= s_.size()) fail("unexpected end of input");
    Value v;
    char c = s_[pos_];
    if (c == '{') {
      v.type_ = Value::Type::Object;
      ++pos_;
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
        std::string key = parse_string();
        for (const auto& member : v.object_) {
          if (member.first == key) fail("duplicate key \"" + key + "\"");
        }
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
        ++pos_;
        skip_ws();
        v.object_.emplace_back(std::move(key), parse_value(depth + 1));
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_.size() && s_[pos_] == '}') {
          ++pos_;
          return v;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = Value::Type::Array;
      ++pos_;
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        skip_ws();
        v.array_.push_back(parse_value(depth + 1));
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == ',') {
          ++pos_;
          continue;
        }
        if (pos_ < s_.size() && s_[pos_] == ']') {
          ++pos_;
          return v;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = Value::Type::String;
      v.text_ = parse_string();
      return v;
    }
    if (consume_literal("true")) {
      v.type_ = Value::Type::Bool;
      v.bool_ = true;
      return v;
    }
    if (consume_literal("false")) {
      v.type_ = Value::Type::Bool;
      return v;
    }
    if (consume_literal("null")) return v;
    // Python's json module writes these for non-finite floats.
    if (consume_literal("NaN")) return number(std::numeric_limits<double>::quiet_NaN(), "NaN");
    if (consume_literal("Infinity")) return number(std::numeric_limits<double>::infinity(), "Infinity");
    if (consume_literal("-Infinity")) return number(-std::numeric_limits<double>::infinity(), "-Infinity");
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    fail(std::string("unexpected character '") + c + "'");
  }

  static Value number(double d, std::string text) {
    Value v;
    v.type_ = Value::Type::Number;
    v.number_ = d;
    v.text_ = std::move(text);
    return v;
  }

  Value parse_number() {
    size_t start = pos_;
    auto digits = [&] {
      size_t from = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
      if (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') fail("leading zeros are not JSON");
    } else if (digits() == 0) {
      fail("expected digits");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) fail("expected digits after '.'");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) fail("expected digits in the exponent");
    }
    std::string text = s_.substr(start, pos_ - start);
    return number(std::strtod(text.c_str(), nullptr), text);
  }

  unsigned hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= unsigned(h - '0');
      else if (h >= 'a' && h <= 'f') cp |= unsigned(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') cp |= unsigned(h - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return cp;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair encodes one code point
            if (!consume_literal("\\u")) fail("lone high surrogate");
            unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("lone low surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: fail(std::string("bad escape '\\") + e + "'");
      }
    }
  }
};

Value Value::parse(const std::string& text) { return Parser(text).parse_document(); }

static const char* type_name(Value::Type t) {
  switch (t) {
    case Value::Type::Null: return "null";
    case Value::Type::Bool: return "a boolean";
    case Value::Type::Number: return "a number";
    case Value::Type::String: return "a string";
    case Value::Type::Array: return "an array";
    case Value::Type::Object: return "an object";
  }
  return "?";
}

static void expect(const Value& v, Value::Type t, const std::string& what) {
  if (v.type() != t) throw TypeError(what + " must be " + type_name(t) + ", got " + type_name(v.type()));
}

bool Value::as_bool(const std::string& what) const {
  expect(*this, Type::Bool, what);
  return bool_;
}

double Value::as_double(const std::string& what) const {
  expect(*this, Type::Number, what);
  return number_;
}

int64_t Value::as_int(const std::string& what) const {
  expect(*this, Type::Number, what);
  if (text_.find_first_of(".eEIN") != std::string::npos) throw TypeError(what + " must be an integer, got " + text_);
  errno = 0;
  long long v = std::strtoll(text_.c_str(), nullptr, 10);
  if (errno == ERANGE) throw TypeError(what + " = " + text_ + " does not fit in 64 bits");
  return static_cast<int64_t>(v);
}

uint64_t Value::as_u64_wrapping(const std::string& what) const {
  expect(*this, Type::Number, what);
  if (text_.find_first_of(".eEIN") != std::string::npos) throw TypeError(what + " must be an integer, got " + text_);
  errno = 0;
  if (text_[0] == '-') {
    long long v = std::strtoll(text_.c_str(), nullptr, 10);
    if (errno == ERANGE) throw TypeError(what + " = " + text_ + " is below -2^63");
    return static_cast<uint64_t>(v);  // two's complement: the same bits as Python's `seed & MASK64`
  }
  unsigned long long v = std::strtoull(text_.c_str(), nullptr, 10);
  if (errno == ERANGE) throw TypeError(what + " = " + text_ + " is 2^64 or more");
  return static_cast<uint64_t>(v);
}

const std::string& Value::as_string(const std::string& what) const {
  expect(*this, Type::String, what);
  return text_;
}

const std::vector<Value>& Value::as_array(const std::string& what) const {
  expect(*this, Type::Array, what);
  return array_;
}

const std::vector<std::pair<std::string, Value>>& Value::as_object(const std::string& what) const {
  expect(*this, Type::Object, what);
  return object_;
}

const Value* Value::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& member : object_) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

const Value& Value::at(const std::string& key, const std::string& what) const {
  expect(*this, Type::Object, what);
  const Value* v = find(key);
  if (v == nullptr) throw TypeError(what + " has no \"" + key + "\"");
  return *v;
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

}  // namespace mtp_edge::json

namespace mtp_edge::json {

std::string number(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // 1 -> 1.0, as Python prints a float
  return s;
}

}  // namespace mtp_edge::json
