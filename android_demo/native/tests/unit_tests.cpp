// Unit tests of the runner's pieces that need no model: sha256, the JSON reader, the sampling
// arithmetic and the draft policy (through their public headers only), the manifest reader's
// first checks and method signatures (draft_chain_k), and the UTF-8 streaming of generated text. Registered with CTest, one test per group (CMakeLists.txt, MTP_EDGE_BUILD_TESTS):
//
//   cmake --build BUILD --target mtp_edge_unit_tests && ctest --test-dir BUILD --output-on-failure
//   BUILD/mtp_edge_unit_tests [GROUP]     one group, or all of them; --list prints the group names
//
// No test framework (none ships with the wheel or the NDK): CHECK* count and report failures with
// their line, and a group fails if any check failed or none ran.
//
// Expected values: the SHA-256 digests are the FIPS 180-2 / NIST CAVP examples, each (and the
// digests of the prefixes of `pattern()`) checked with Python's hashlib.sha256. The sampling and
// draft-policy values were generated with the Python runtime (mtp_edge.runtime.sampling,
// mtp_edge.runtime.draft_policy) by a throwaway script, e.g.
//   r = SplitMix64(1234567); [hex(r.next_u64()) for _ in range(4)]
//   [v.hex() for v in gumbel_noise(11, 7, [0, 1, 511]).tolist()]
//   best_plan(CostTable(decode=1.0, draft_step=0.05, verify={2: 1.3, 3: 1.6, 4: 1.9}), [0.5] * 3, 3)
// and are embedded as exact hex floats / integers, so a change on either side shows up here.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "draft_policy.h"
#include "errors.h"
#include "json.h"
#include "manifest.h"
#include "sampling.h"
#include "sha256.h"
#include "utf8.h"

using namespace mtp_edge;

namespace {

int g_checks = 0;
int g_failures = 0;

template <typename T>
std::string show(const T& v) {
  std::ostringstream out;
  out << v;
  return out.str();
}
std::string show(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a (%.17g)", v, v);
  return buf;
}
std::string show(const std::string& v) { return "\"" + v + "\""; }
std::string show(const char* v) { return show(std::string(v)); }
std::string show(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}
template <typename T>
std::string show(const std::vector<T>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + show(v[i]);
  return s + "]";
}

void record(bool ok, const char* file, int line, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
  }
}

}  // namespace

#define CHECK(cond) record(static_cast<bool>(cond), __FILE__, __LINE__, #cond)
// Exact equality (doubles bit for bit: no tolerance unless CHECK_NEAR says so).
#define CHECK_EQ(a, b)                                                                                       \
  do {                                                                                                       \
    const auto _a = (a); /* copies: (a) may be a reference into a temporary */                               \
    const auto _b = (b);                                                                                     \
    record(_a == _b, __FILE__, __LINE__, std::string(#a " == " #b ": ") + show(_a) + " vs " + show(_b)); \
  } while (0)
#define CHECK_NEAR(a, b, tol)                                                                                         \
  do {                                                                                                                \
    const double _a = (a), _b = (b);                                                                                  \
    record(std::fabs(_a - _b) <= (tol), __FILE__, __LINE__, std::string(#a " ~ " #b ": ") + show(_a) + " vs " + show(_b)); \
  } while (0)
// `expr` throws `Type` whose what() contains `needle`.
#define CHECK_THROWS(expr, Type, needle)                                                                        \
  do {                                                                                                          \
    std::string _got = "no exception";                                                                          \
    bool _ok = false;                                                                                           \
    try {                                                                                                       \
      (void)(expr);                                                                                             \
    } catch (const Type& e) {                                                                                   \
      _got = e.what();                                                                                          \
      _ok = _got.find(needle) != std::string::npos;                                                             \
    } catch (const std::exception& e) {                                                                         \
      _got = std::string("another exception: ") + e.what();                                                     \
    }                                                                                                           \
    record(_ok, __FILE__, __LINE__, std::string(#expr " throws " #Type " with ") + show(needle) + ", got " + show(_got)); \
  } while (0)

namespace {

// A new empty folder under the temporary directory (removed by the test that made it).
std::filesystem::path fresh_dir(const std::string& what) {
  const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
  auto dir = std::filesystem::temp_directory_path() /
             ("mtp_edge_unit_" + what + "_" + std::to_string(stamp) + "_" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(dir);
  return dir;
}

// --------------------------------------------------------------------------- sha256

std::string sha256_of(const std::string& s) {
  Sha256 h;
  h.update(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  return h.hex_digest();
}

// The same bytes fed in pieces of `piece` bytes (the last one shorter).
std::string sha256_in_pieces(const std::string& s, size_t piece) {
  Sha256 h;
  for (size_t at = 0; at < s.size(); at += piece) {
    h.update(reinterpret_cast<const uint8_t*>(s.data()) + at, std::min(piece, s.size() - at));
  }
  return h.hex_digest();
}

// 200 bytes covering every residue mod 64 at the block boundaries: byte i = (7 i + 3) mod 256.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + 3) & 0xFF);
  return s;
}

void test_sha256() {
  // FIPS 180-2 appendix B / NIST CAVP SHA-256 examples.
  CHECK_EQ(sha256_of(""), std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  CHECK_EQ(sha256_of("abc"), std::string("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 448 bits
  CHECK_EQ(sha256_of(two_blocks), std::string("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  CHECK_EQ(sha256_of("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                     "mnopqrstnopqrstu"),  // 896 bits
           std::string("cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"));
  const std::string million_a(1000000, 'a');
  const std::string million_digest = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
  CHECK_EQ(sha256_of(million_a), million_digest);
  CHECK_EQ(sha256_in_pieces(million_a, 1000), million_digest);
  CHECK_EQ(sha256_in_pieces(million_a, 63), million_digest);

  // The padding boundaries (55: the length fits in the last block; 56: it needs another; 64: a full
  // block), against hashlib.sha256(pattern(n)).
  const std::vector<std::pair<size_t, std::string>> prefixes = {
      {55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b"},
      {56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27"},
      {63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055"},
      {64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241"},
      {65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e"},
      {119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e"},
      {120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5"},
      {200, "2c7e18c942ef065b526a2d4e5546283749cd3ddfb51d8fc71f42717363685f46"},
  };
  for (const auto& [n, digest] : prefixes) CHECK_EQ(sha256_of(pattern(n)), digest);

  // Streaming: pieces of awkward sizes, and one split at each awkward offset, give the one-shot digest.
  const std::string message = pattern(200);
  const std::string whole = sha256_of(message);
  for (size_t piece : {1, 55, 56, 63, 64, 65}) CHECK_EQ(sha256_in_pieces(message, piece), whole);
  for (size_t split : {1, 55, 56, 63, 64, 65, 128, 199}) {
    Sha256 h;
    h.update(reinterpret_cast<const uint8_t*>(message.data()), split);
    h.update(nullptr, 0);  // an empty update changes nothing
    h.update(reinterpret_cast<const uint8_t*>(message.data()) + split, message.size() - split);
    CHECK_EQ(h.hex_digest(), whole);
  }

  // sha256_file: the bytes of the file; an unreadable path names itself.
  const auto dir = fresh_dir("sha256");
  const std::string file = (dir / "data.bin").string();
  std::ofstream(file, std::ios::binary) << message;
  CHECK_EQ(sha256_file(file), whole);
  std::ofstream(file, std::ios::binary | std::ios::trunc).flush();
  CHECK_EQ(sha256_file(file), std::string("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  const std::string missing = (dir / "missing.bin").string();
  CHECK_THROWS(sha256_file(missing), std::runtime_error, missing + ": cannot open for reading");
  std::filesystem::remove_all(dir);
}

// --------------------------------------------------------------------------- json

using json::Json;
using json::ParseError;
using json::TypeError;

// The runner's reading of JSON: nlohmann/json plus the checks of json.h (duplicate keys, depth,
// typed access naming the field), and the two writers.
void test_json() {
  const Json doc = json::parse(
      " {\"a\": 1, \"b\": [true, false, null], \"c\": \"x\\u00e9\\n\\\"\\/\", \"d\": -1.5e3,\n\t\"e\": {}, \"f\": [], \"0\": 2} ");
  CHECK(doc.is_object());
  CHECK_EQ(json::as_object(doc, "doc").size(), size_t(7));
  CHECK_EQ(doc.items().begin().key(), std::string("a"));  // members in document order, not sorted
  CHECK_EQ((++doc.items().begin()).key(), std::string("b"));
  CHECK_EQ(json::as_int(json::at(doc, "a", "doc"), "a"), int64_t(1));
  CHECK_EQ(json::as_double(json::at(doc, "a", "doc"), "a"), 1.0);
  const auto& b = json::as_array(json::at(doc, "b", "doc"), "b");
  CHECK_EQ(b.size(), size_t(3));
  CHECK(json::as_bool(b[0], "b0") && !json::as_bool(b[1], "b1") && b[2].is_null());
  CHECK_EQ(json::as_string(json::at(doc, "c", "doc"), "c"), std::string("x\xc3\xa9\n\"/"));
  CHECK_EQ(json::as_double(json::at(doc, "d", "doc"), "d"), -1500.0);
  CHECK(json::at(doc, "e", "doc").is_object() && json::at(doc, "e", "doc").empty());
  CHECK(json::at(doc, "f", "doc").is_array() && json::as_array(json::at(doc, "f", "doc"), "f").empty());
  CHECK(json::find(doc, "zz") == nullptr);
  CHECK(json::find(json::at(doc, "b", "doc"), "a") == nullptr);  // find on a non-object: nullptr, no throw
  CHECK_EQ(json::as_string(json::parse("\"\\ud83d\\ude00\""), "s"), std::string("\xf0\x9f\x98\x80"));  // surrogate pair
  CHECK_EQ(json::as_string(json::parse("\"\\udbff\\udfff\\u0041\""), "s"), std::string("\xf4\x8f\xbf\xbf" "A"));  // U+10FFFF
  CHECK_EQ(json::as_string(json::parse("\"\xe6\x97\xa5\""), "s"), std::string("\xe6\x97\xa5"));  // raw UTF-8
  CHECK_EQ(json::as_int(json::parse("0"), "zero"), int64_t(0));
  CHECK_EQ(json::as_double(json::parse("-0.25"), "x"), -0.25);

  // Integers exact past 2^53; seeds wrap modulo 2^64 as Python's `seed & MASK64`.
  CHECK_EQ(json::as_int(json::parse("9007199254740993"), "n"), int64_t(9007199254740993LL));
  CHECK_EQ(json::as_int(json::parse("-9223372036854775808"), "n"), std::numeric_limits<int64_t>::min());
  CHECK_EQ(json::as_int(json::parse("9223372036854775807"), "n"), std::numeric_limits<int64_t>::max());
  CHECK_EQ(json::as_u64_wrapping(json::parse("18446744073709551615"), "seed"), std::numeric_limits<uint64_t>::max());
  CHECK_EQ(json::as_u64_wrapping(json::parse("9223372036854775808"), "seed"), uint64_t(1) << 63);
  CHECK_EQ(json::as_u64_wrapping(json::parse("-1"), "seed"), std::numeric_limits<uint64_t>::max());
  CHECK_EQ(json::as_u64_wrapping(json::parse("-9223372036854775808"), "seed"), uint64_t(1) << 63);
  CHECK_EQ(json::as_u64_wrapping(json::parse("7"), "seed"), uint64_t(7));
  CHECK_THROWS(json::as_u64_wrapping(json::parse("18446744073709551616"), "seed"), TypeError, "seed = 18446744073709551616 is 2^64 or more");
  CHECK_THROWS(json::as_u64_wrapping(json::parse("-9223372036854775809"), "seed"), TypeError, "seed is below -2^63");
  CHECK_THROWS(json::as_int(json::parse("-9223372036854775809"), "k"), TypeError, "k is below -2^63: it does not fit in 64 bits");
  CHECK_THROWS(json::as_u64_wrapping(json::parse("1e19"), "seed"), TypeError, "seed must be an integer, got 1e+19");
  CHECK_THROWS(json::as_u64_wrapping(json::parse("0.5"), "seed"), TypeError, "seed must be an integer, got 0.5");
  CHECK_THROWS(json::as_int(json::parse("9223372036854775808"), "k"), TypeError, "k = 9223372036854775808 does not fit in 64 bits");
  CHECK_THROWS(json::as_int(json::parse("1e30"), "k"), TypeError, "k = 1000000000000000019884624838656 does not fit in 64 bits");
  CHECK_THROWS(json::as_int(json::parse("1.5"), "k"), TypeError, "k must be an integer, got 1.5");
  CHECK_THROWS(json::as_int(json::parse("1e3"), "k"), TypeError, "k must be an integer, got 1000.0");
  CHECK_THROWS(json::as_int(json::parse("true"), "k"), TypeError, "k must be a number, got a boolean");
  CHECK_THROWS(json::as_int(json::parse("2.0"), "k"), TypeError, "k must be an integer, got 2.0");

  // Typed access names what the caller called it.
  CHECK_THROWS(json::at(doc, "missing", "request"), TypeError, "request has no \"missing\"");
  CHECK_THROWS(json::at(b[0], "missing", "request"), TypeError, "request must be an object, got a boolean");
  CHECK_THROWS(json::as_string(json::at(doc, "a", "doc"), "request prompt"), TypeError, "request prompt must be a string, got a number");
  CHECK_THROWS(json::as_object(json::at(doc, "b", "doc"), "costs"), TypeError, "costs must be an object, got an array");
  CHECK_THROWS(json::as_bool(doc, "flag"), TypeError, "flag must be a boolean, got an object");
  CHECK_THROWS(json::as_int(json::at(doc, "c", "doc"), "k"), TypeError, "k must be a number, got a string");
  CHECK_THROWS(json::as_array(b[2], "ids"), TypeError, "ids must be an array, got null");

  // Malformed documents: a ParseError, nlohmann's message without its exception tag.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "parse error at line 1, column 1: attempting to parse an empty input"},
      {"   ", "parse error at line 1, column 4: syntax error while parsing value - unexpected end of input"},
      {"[1,]", "parse error at line 1, column 4: syntax error while parsing value - unexpected ']'"},
      {"{\"a\": 1,}", "syntax error while parsing object key - unexpected '}'; expected string literal"},
      {"{\"a\": 1, \"a\": 2}", "duplicate key \"a\""},
      {"{\"x\": {\"a\": 1, \"b\": {\"a\": 3}, \"a\": 2}}", "duplicate key \"a\""},
      {"{\"a\" 1}", "unexpected number literal; expected ':'"},
      {"[1 2]", "unexpected number literal; expected ']'"},
      {"01", "parse error at line 1, column 2: syntax error while parsing value - unexpected number literal; expected end of input"},
      {"-", "parse error at line 1, column 2: syntax error while parsing value - invalid number; expected digit after '-'"},
      {"1.", "invalid number; expected digit after '.'"},
      {"1e+", "invalid number; expected digit after exponent sign"},
      {"1 2", "expected end of input"},
      {"// comment\n1", "invalid literal"},
      {"'a'", "invalid literal"},
      {"tru", "invalid literal"},
      {"\"abc", "missing closing quote"},
      {"\"a\nb\"", "control character U+000A (LF) must be escaped"},
      {"\"\\x\"", "invalid string: forbidden character after backslash"},
      {"\"\\u12zz\"", "'\\u' must be followed by 4 hex digits"},
      {"\"\\ud83d\"", "surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF"},
      {"\"\\ude00\"", "surrogate U+DC00..U+DFFF must follow U+D800..U+DBFF"},
      {"\"\\ud83d\\u0041\"", "surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF"},
      {"\"\xff\"", "ill-formed UTF-8 byte"},
      {"+1", "invalid literal"},
      // Python's json writes NaN / Infinity for non-finite floats; no field the runner reads holds one.
      {"NaN", "invalid literal"},
      {"[-Infinity]", "invalid number"},
  };
  for (const auto& [text, message] : bad) CHECK_THROWS(json::parse(text), ParseError, message);
  for (const auto& [text, message] : bad) {  // one line each, without nlohmann's "[json.exception...]" tag
    try {
      json::parse(text);
    } catch (const ParseError& e) {
      CHECK(std::string(e.what()).find('\n') == std::string::npos && std::string(e.what()).find("json.exception") == std::string::npos);
    }
  }
  CHECK_THROWS(json::parse(std::string(200, '[') + std::string(200, ']')), ParseError, "JSON nested too deeply");
  std::string deep_objects;
  for (int i = 0; i < 200; ++i) deep_objects += "{\"a\": ";
  CHECK_THROWS(json::parse(deep_objects), ParseError, "JSON nested too deeply");
  const std::string deep_ok = std::string(100, '[') + std::string(100, ']');
  CHECK(json::parse(deep_ok).is_array());
  CHECK_EQ(json::parse("{\"a\": {\"k\": 1}, \"b\": {\"k\": 2}}").size(), size_t(2));  // one key in two objects

  // quote(): a JSON string literal that reads back; number(): Python's repr of a float.
  const std::string raw = std::string("a\"b\\c\nd\te\rf") + '\x01' + "\x1f" + "\xc3\xa9";
  CHECK_EQ(json::quote(raw), std::string("\"a\\\"b\\\\c\\nd\\te\\rf\\u0001\\u001f\xc3\xa9\""));
  CHECK_EQ(json::as_string(json::parse(json::quote(raw)), "s"), raw);
  CHECK_EQ(json::number(0.7), std::string("0.7"));
  CHECK_EQ(json::number(1.0), std::string("1.0"));
  CHECK_EQ(json::number(-2.0), std::string("-2.0"));
  CHECK_EQ(json::number(1e-05), std::string("1e-05"));
  CHECK_EQ(json::number(1e16), std::string("1e+16"));
  CHECK_EQ(json::number(123456789.0), std::string("123456789.0"));
  CHECK_EQ(json::number(1000.0), std::string("1000.0"));  // Python's repr, not %g's 1e+03
  CHECK_EQ(json::number(-1500.0), std::string("-1500.0"));
  CHECK_EQ(json::number(1e15), std::string("1000000000000000.0"));
  CHECK_EQ(json::number(2.5e-4), std::string("0.00025"));
  CHECK_EQ(json::number(2.5e-5), std::string("2.5e-05"));
  CHECK_EQ(json::number(0.1 + 0.2), std::string("0.30000000000000004"));
  CHECK_EQ(json::number(std::nan("")), std::string("NaN"));
  CHECK_EQ(json::number(-std::numeric_limits<double>::infinity()), std::string("-Infinity"));
  for (double d : {0.1, 1.0 / 3.0, 6.02214076e23, 5e-324, 1.7976931348623157e308}) {
    CHECK_EQ(json::as_double(json::parse(json::number(d)), "round trip"), d);
  }
}

// --------------------------------------------------------------------------- sampling

std::vector<uint64_t> draws(uint64_t seed, int n) {
  SplitMix64 rng(seed);
  std::vector<uint64_t> out;
  for (int i = 0; i < n; ++i) out.push_back(rng.next_u64());
  return out;
}

void test_sampling() {
  // SplitMix64 as mtp_edge.runtime.sampling.SplitMix64 (Python's seed -1 wraps to 2^64 - 1).
  CHECK_EQ(draws(0, 4), (std::vector<uint64_t>{0xe220a8397b1dcdafULL, 0x6e789e6aa1b965f4ULL, 0x06c45d188009454fULL,
                                                0xf88bb8a8724c81ecULL}));
  CHECK_EQ(draws(1234567, 4), (std::vector<uint64_t>{0x599ed017fb08fc85ULL, 0x2c73f08458540fa5ULL, 0x883ebce5a3f27c77ULL,
                                                      0x3fbef740e9177b3fULL}));
  const std::vector<uint64_t> minus_one = {0xe4d971771b652c20ULL, 0xe99ff867dbf682c9ULL, 0x382ff84cb27281e9ULL,
                                           0x6d1db36ccba982d2ULL};
  CHECK_EQ(draws(std::numeric_limits<uint64_t>::max(), 4), minus_one);
  CHECK_EQ(draws(json::as_u64_wrapping(json::parse("-1"), "seed"), 4), minus_one);  // a request's seed -1
  SplitMix64 rng42(42);
  CHECK_EQ(rng42.uniform(), 0x1.7bae644c5fd6dp-1);
  CHECK_EQ(rng42.uniform(), 0x1.477f199d93378p-3);
  CHECK_EQ(rng42.uniform(), 0x1.1d499d5c4c3e6p-2);

  // The coupled rule's noise, bit for bit.
  CHECK_EQ(noise_row_key(0, 0), uint64_t(0x48218226ff3cd4bfULL));
  CHECK_EQ(noise_row_key(11, 5), uint64_t(0x4c23c9aaa7d39973ULL));
  CHECK_EQ(noise_row_key(std::numeric_limits<uint64_t>::max(), 123456), uint64_t(0x48461cd8feb436f9ULL));
  CHECK_THROWS(noise_row_key(1, -1), RunnerError, "position must be >= 0, got -1.");
  CHECK_EQ(gumbel_noise(11, 7, 0), 0x1.3a1cedd05cc81p-2);
  CHECK_EQ(gumbel_noise(11, 7, 1), 0x1.628ae88ecaaeap-2);
  CHECK_EQ(gumbel_noise(11, 7, 511), -0x1.069495aa7cdd6p+0);
  CHECK_EQ(portable_log(0.5), -0x1.62e42fefa39efp-1);
  CHECK_EQ(portable_log(2.0), 0x1.62e42fefa39efp-1);
  CHECK_EQ(portable_log(10.0), 0x1.26bb1bbb55516p+1);
  CHECK_EQ(portable_log(1e-300), -0x1.5963447f87fb5p+9);
  CHECK_EQ(portable_log(1.0), 0.0);
  CHECK_EQ(bits_to_uniform(0), 0x1p-53);
  CHECK_EQ(bits_to_uniform(std::numeric_limits<uint64_t>::max()), 1.0 - 0x1p-53);

  // Inverse-CDF draws on exact probabilities: sample(torch.tensor([0, .5, .25, .25]), SplitMix64(5)) x 10.
  {
    SplitMix64 rng(5);
    std::vector<int64_t> got;
    const std::vector<double> probs = {0.0, 0.5, 0.25, 0.25};
    for (int i = 0; i < 10; ++i) got.push_back(sample(probs, rng));
    CHECK_EQ(got, (std::vector<int64_t>{1, 3, 1, 1, 1, 1, 3, 2, 1, 2}));
  }

  // probabilities(): top-k keeps ties at the k-th and zeroes the rest; top-p keeps the crossing token.
  const float logits[] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  SamplingConfig top_k;
  top_k.temperature = 1.0;
  top_k.top_k = 3;
  const std::vector<double> pk = probabilities(logits, 5, top_k);
  CHECK_EQ(pk[0], 0.0);
  CHECK_EQ(pk[4], 0.0);
  CHECK_EQ(pk[1], pk[3]);
  // torch's exp and sum may differ from libm's in the last bits (sampling.h): within a few ulps.
  CHECK_NEAR(pk[1], 0x1.b07456cbe7b94p-2, 1e-15);
  CHECK_NEAR(pk[2], 0x1.3e2ea4d0611b0p-3, 1e-15);
  CHECK_NEAR(pk[1] + pk[2] + pk[3], 1.0, 1e-15);
  SamplingConfig top_p;
  top_p.temperature = 1.0;
  top_p.top_p = 0.6;
  CHECK_EQ(probabilities(logits, 5, top_p), (std::vector<double>{0.0, 0.5, 0.0, 0.5, 0.0}));

  // argmax: the first maximal index; a NaN counts as the maximum, as torch.argmax.
  const float ties[] = {1.0f, 4.0f, -2.0f, 4.0f};
  CHECK_EQ(argmax(ties, 4), int64_t(1));
  const float with_nan[] = {1.0f, 4.0f, std::nanf(""), 9.0f};
  CHECK_EQ(argmax(with_nan, 4), int64_t(2));

  // Greedy acceptance: the longest prefix matching the target's argmax rows, then its correction
  // (or, all accepted, the bonus token of the last row). The rng is not touched.
  const int64_t vocab = 4;
  const float rows[] = {0, 0, 9, 0,   // argmax 2
                        0, 9, 0, 0,   // argmax 1
                        9, 0, 0, 0,   // argmax 0
                        0, 0, 0, 9};  // argmax 3
  SamplingConfig greedy;
  SplitMix64 unused(1);
  Acceptance a = accept_drafts({2, 1, 3}, {{}, {}, {}}, rows, vocab, greedy, unused);
  CHECK_EQ(a.accepted, int64_t(2));
  CHECK_EQ(a.next_token, int64_t(0));
  a = accept_drafts({2, 1, 0}, {{}, {}, {}}, rows, vocab, greedy, unused);
  CHECK_EQ(a.accepted, int64_t(3));
  CHECK_EQ(a.next_token, int64_t(3));
  a = accept_drafts({}, {}, rows, vocab, greedy, unused);
  CHECK_EQ(a.accepted, int64_t(0));
  CHECK_EQ(a.next_token, int64_t(2));
  CHECK_EQ(unused.next_u64(), draws(1, 1)[0]);

  // Coupled (Gumbel-max) choice: coupled_choose(logits, SamplingConfig(temperature=0.9, rule="coupled"), 7, pos).
  const float coupled_logits[] = {0.5f, 2.0f, -1.0f, 1.75f, 2.0f, 0.0f, 1.0f, -0.5f};
  SamplingConfig coupled;
  coupled.temperature = 0.9;
  coupled.rule = SamplingRule::kCoupled;
  std::vector<int64_t> chosen;
  for (int64_t pos = 0; pos < 12; ++pos) chosen.push_back(coupled_choose(coupled_logits, 8, coupled, 7, pos));
  CHECK_EQ(chosen, (std::vector<int64_t>{1, 6, 1, 4, 1, 3, 6, 5, 4, 6, 1, 2}));
  // A draft that equals the target's token there is accepted: drafts = the tokens above from position 3.
  std::vector<float> four_rows;
  for (int r = 0; r < 4; ++r) four_rows.insert(four_rows.end(), coupled_logits, coupled_logits + 8);
  a = coupled_accept({4, 1, 3}, four_rows.data(), 8, coupled, 7, 3);
  CHECK_EQ(a.accepted, int64_t(3));
  CHECK_EQ(a.next_token, int64_t(6));  // position 6
  a = coupled_accept({4, 2, 3}, four_rows.data(), 8, coupled, 7, 3);
  CHECK_EQ(a.accepted, int64_t(1));
  CHECK_EQ(a.next_token, int64_t(1));  // position 4

  // Configuration checks, in the Python runtime's words.
  CHECK_EQ(std::string(sampling_rule_name(parse_sampling_rule("coupled"))), std::string("coupled"));
  CHECK(parse_sampling_rule("rejection") == SamplingRule::kRejection);
  CHECK_THROWS(parse_sampling_rule("gumbel"), RunnerError, "sampling rule 'gumbel' is unknown; choose from rejection, coupled.");
  SamplingConfig cfg;
  CHECK(cfg.greedy() && !cfg.coupled() && !cfg.depends_on_draft_lengths());
  cfg.temperature = 0.8;
  CHECK(!cfg.greedy() && cfg.depends_on_draft_lengths());
  cfg.rule = SamplingRule::kCoupled;
  CHECK(cfg.coupled() && !cfg.depends_on_draft_lengths());
  cfg.top_p = 0.0;
  CHECK_THROWS(cfg.validate(), RunnerError, "top_p must be in (0, 1], got 0.0.");
  cfg.top_p = 1.0;
  cfg.top_k = -1;
  CHECK_THROWS(cfg.validate(), RunnerError, "top_k must be >= 0 (0 = off), got -1.");
  cfg.top_k = 0;
  cfg.temperature = -1.0;
  CHECK_THROWS(cfg.validate(), RunnerError, "temperature must be >= 0 (0 = greedy), got -1.0.");
}

// --------------------------------------------------------------------------- draft policy

CostTable table() {  // tests/test_native_runner.py's COSTS
  CostTable c;
  c.decode = 1.0;
  c.draft_step = 0.05;
  c.verify = {{2, 1.3}, {3, 1.6}, {4, 1.9}};
  return c;
}

void check_plan(const Plan& p, int k, DraftMode mode, double tokens, double seconds, bool probe, int line) {
  record(p.k == k && p.mode == mode && p.tokens == tokens && p.seconds == seconds && p.probe == probe, __FILE__, line,
         "plan " + std::to_string(p.k) + " " + draft_mode_name(p.mode) + " " + show(p.tokens) + " " + show(p.seconds) +
             (p.probe ? " probe" : "") + ", expected " + std::to_string(k) + " " + draft_mode_name(mode) + " " + show(tokens) +
             " " + show(seconds) + (probe ? " probe" : ""));
}
#define CHECK_PLAN(plan, k, mode, tokens, seconds, probe) check_plan(plan, k, mode, tokens, seconds, probe, __LINE__)

void test_draft_policy() {
  const CostTable costs = table();
  costs.validate();
  CHECK_EQ(costs.max_k(), 3);
  DraftMode mode;
  CHECK_EQ(costs.round_seconds(0, &mode), 1.0);
  CHECK(mode == DraftMode::kNone);
  CHECK_EQ(costs.round_seconds(2, &mode), 0.1 + 1.6);
  CHECK(mode == DraftMode::kSteps);

  // best_plan: the most expected tokens per second; values from runtime/draft_policy.py's best_plan.
  CHECK_PLAN(best_plan(costs, {0.5, 0.5, 0.5}, 3), 1, DraftMode::kSteps, 0x1.8p+0, 0x1.599999999999ap+0, false);
  CHECK_PLAN(best_plan(costs, {0.9, 0.9, 0.9}, 3), 3, DraftMode::kSteps, 0x1.b83126e978d50p+1, 0x1.0666666666666p+1, false);
  CHECK_PLAN(best_plan(costs, {0.0, 0.0, 0.0}, 3), 0, DraftMode::kNone, 1.0, 1.0, false);
  CHECK_PLAN(best_plan(costs, {0.9, 0.2, 0.9}, 3), 1, DraftMode::kSteps, 0x1.e666666666666p+0, 0x1.599999999999ap+0, false);
  CHECK_PLAN(best_plan(costs, {0.9, 0.9, 0.9}, 1), 1, DraftMode::kSteps, 0x1.e666666666666p+0, 0x1.599999999999ap+0, false);
  CHECK_PLAN(best_plan(costs, {0.9, 0.9, 0.9}, 0), 0, DraftMode::kNone, 1.0, 1.0, false);
  CHECK_EQ(choose_k(costs, {0.9, 0.9, 0.9}, 3), 3);
  // A fused draft call cheaper than k steps is used (k = 3: 0.3 s against 3 x 0.2 s).
  CostTable with_call = costs;
  with_call.draft_step = 0.2;
  with_call.draft_call = {{3, 0.3}};
  with_call.validate();
  CHECK_PLAN(best_plan(with_call, {0.95, 0.95, 0.95}, 3), 3, DraftMode::kCall, 0x1.dadd2f1a9fbe7p+1, 0x1.1999999999999p+1, false);
  CHECK_EQ(with_call.round_seconds(2, &mode), 0x1.0p+1);  // no call for 2: steps
  CHECK(mode == DraftMode::kSteps);
  // A tie goes to the smaller k: 2 tokens in 2 s is 1 token in 1 s.
  CostTable tie;
  tie.decode = 1.0;
  tie.verify = {{2, 2.0}};
  CHECK_PLAN(best_plan(tie, {1.0}, 1), 0, DraftMode::kNone, 1.0, 1.0, false);
  CHECK_EQ(expected_tokens({0.5, 0.5, 0.5}, 3), 0x1.ep+0);
  CHECK_EQ(expected_tokens({0.9, 0.2, 0.9}, 2), 0x1.0a3d70a3d70a4p+1);
  CHECK_THROWS(best_plan(costs, {0.5, 0.5}, 3), RunnerError, "max_k = 3 but the cost table covers K <= 3 and the acceptance 2 positions.");
  CHECK_THROWS(best_plan(costs, {0.5, 1.5, 0.5}, 3), RunnerError, "acceptance[2] = 1.5 is not a probability in [0, 1].");

  // Table checks.
  CostTable gap = costs;
  gap.verify.erase(3);
  CHECK_THROWS(gap.validate(), RunnerError, "cost table: verify is missing length(s) 3: give seconds for every length 2..4.");
  CostTable zero = costs;
  zero.decode = 0.0;
  CHECK_THROWS(zero.validate(), RunnerError, "cost table: decode is 0 seconds; it must be a finite number > 0.");
  CHECK_EQ(costs.measured("verify", 2, 2.3, 0.5).verify.at(2), 1.3 + 0.5 * (2.3 - 1.3));
  CHECK_EQ(costs.measured("verify", 1, 1.5, 1.0).decode, 1.5);  // a 1-token verify is a decode
  CHECK_EQ(costs.measured("verify", 1, 30.0, 1.0).decode, 2.0 * costs.decode);  // a stall counts as 2x the entry
  CHECK_THROWS(costs.measured("prefill", 1, 1.0, 0.5), RunnerError, "unknown call 'prefill'");

  // The acceptance estimate: AcceptanceEstimate(3).observed(3, 1).rates().
  const AcceptanceEstimate est = AcceptanceEstimate(3).observed(3, 1);
  // 2/3; 4/9 (prior mean 2/3 with weight 2, one rejection); position 3, never judged, takes 4/9 too.
  CHECK_EQ(est.rates(), (std::vector<double>{0x1.5555555555555p-1, 0x1.c71c71c71c71cp-2, 0x1.c71c71c71c71cp-2}));
  CHECK_EQ(est.observed(0, 0).rates(), est.rates());  // a plain round tells nothing
  CHECK_THROWS(est.observed(2, 3), RunnerError, "a round reports 3 accepted of 2 drafted");

  // The policy over rounds (frozen, probe every 2 plain rounds with 2 drafts): Python's
  //   p = DraftPolicy(costs, 3, probe_every=2, probe_k=2, frozen=True); p.next_plan();
  //   3 x p.observe(1, 0); 8 x p.next_plan()
  DraftPolicyOptions options;
  options.probe_every = 2;
  options.probe_k = 2;
  options.frozen = true;
  DraftPolicy policy(costs, options);
  CHECK_EQ(policy.max_k(), 3);
  CHECK_PLAN(policy.next_plan(), 1, DraftMode::kSteps, 1.5, 0x1.599999999999ap+0, false);  // prior rates 1/2
  for (int i = 0; i < 3; ++i) policy.observe(1, 0);
  const double probe_tokens = 0x1.3fa0d8126ff02p+0, probe_seconds = 0x1.b333333333334p+0;
  for (int wait : {2, 4}) {  // a probe after which plain decoding still wins doubles the wait for the next
    for (int i = 0; i < wait; ++i) CHECK_PLAN(policy.next_plan(), 0, DraftMode::kNone, 1.0, 1.0, false);
    CHECK_PLAN(policy.next_plan(), 2, DraftMode::kSteps, probe_tokens, probe_seconds, true);
  }
  CHECK_EQ(policy.histogram(), (std::vector<long long>{6, 1, 2, 0}));
  CHECK_EQ(policy.plain_rounds(), 6LL);
  CHECK_EQ(policy.probe_rounds(), 2LL);
  policy.observe_call("decode", 1, 5.0);  // frozen: timings change nothing
  CHECK_EQ(policy.costs().decode, 1.0);
  options.max_k = 4;
  CHECK_THROWS(DraftPolicy(costs, options), RunnerError, "max_k = 4 but the cost table covers K <= 3.");
}

// --------------------------------------------------------------------------- manifest (its first checks)

void test_manifest() {
  const auto dir = fresh_dir("manifest");
  const std::string bundle = dir.string();
  CHECK_THROWS(read_manifest(bundle + "/nowhere"), RunnerError, "nowhere: not a folder. Pass a bundle folder written by `mtp-edge export`.");
  CHECK_THROWS(read_manifest(bundle), RunnerError, "no manifest.json; not a bundle, or its export was interrupted");
  std::ofstream(dir / "manifest.json") << "{\"schema_version\": 2,}";
  CHECK_THROWS(read_manifest(bundle), RunnerError, "not valid JSON (parse error at line 1, column 22: syntax error while parsing object key - unexpected '}'; expected string literal)");
  std::ofstream(dir / "manifest.json", std::ios::trunc) << "[2]";
  CHECK_THROWS(read_manifest(bundle), RunnerError, "not a bundle manifest (expected a JSON object)");
  std::ofstream(dir / "manifest.json", std::ios::trunc) << "{\"schema_version\": 99}";
  CHECK_THROWS(read_manifest(bundle), RunnerError, "bundle schema_version 99 is not supported; this runner reads schema_version 4");
  std::ofstream(dir / "manifest.json", std::ios::trunc) << "{\"schema_version\": 2}";
  CHECK_THROWS(read_manifest(bundle), RunnerError, "bundle schema_version 2 is not supported (schema 2 programs carry no runtime metadata");
  std::ofstream(dir / "manifest.json", std::ios::trunc) << "{\"schema_version\": 3}";
  CHECK_THROWS(read_manifest(bundle), RunnerError, "bundle schema_version 3 is not supported (schema 3 programs prefill through a separate method)");
  std::filesystem::remove_all(dir);
}

// A schema 4 manifest of a K = 3 bundle (hidden 8, 16 draft candidates, prefill chunk 4) whose methods
// are `methods` plus verify and draft, over a stand-in program file; the runner's sizes are made up.
std::string tensor_json(const char* name, const std::string& shape, const char* dtype) {
  return std::string("{\"name\": \"") + name + "\", \"shape\": " + shape + ", \"dtype\": \"" + dtype + "\"}";
}

std::string draft_chain_json(int k, int outputs_of) {
  const std::string n = "[" + std::to_string(outputs_of) + "]";
  return "\"draft_chain_" + std::to_string(k) + "\": {\"inputs\": [" + tensor_json("token", "[1]", "int64") + ", " +
         tensor_json("hidden", "[8]", "float32") + ", " + tensor_json("position", "[1]", "int64") + ", " +
         tensor_json("validated_length", "[1]", "int64") + "], \"outputs\": [" + tensor_json("draft_ids", n, "int64") + ", " +
         tensor_json("top_probs", n, "float32") + "]}";
}

void write_bundle(const std::filesystem::path& dir, const std::string& extra_methods) {
  std::ofstream(dir / "model.pte", std::ios::trunc) << "program";
  const std::string methods =
      "\"verify\": {\"lengths\": [1, 4], \"inputs\": [" + tensor_json("tokens", "[1, 4]", "int64") + ", " +
      tensor_json("start_pos", "[1]", "int64") + ", " + tensor_json("logits_at", "[4]", "int64") + "], \"outputs\": [" +
      tensor_json("logits", "[4, 32]", "float32") + ", " + tensor_json("hidden", "[4, 8]", "float32") + "]}, \"draft\": {\"inputs\": [" +
      tensor_json("token", "[1]", "int64") + ", " + tensor_json("hidden", "[8]", "float32") + ", " + tensor_json("position", "[1]", "int64") +
      ", " + tensor_json("validated_length", "[1]", "int64") + "], \"outputs\": [" + tensor_json("candidate_ids", "[16]", "int64") + ", " +
      tensor_json("candidate_logits", "[16]", "float32") + ", " + tensor_json("hidden", "[8]", "float32") + ", " +
      tensor_json("argmax_id", "[1]", "int64") + "]}" + extra_methods;
  std::ofstream(dir / "manifest.json", std::ios::trunc)
      << "{\"schema_version\": 4, \"artifacts\": {\"program\": {\"file\": \"model.pte\", \"bytes\": 7, \"sha256\": \"" +
             sha256_of("program") + "\"}}, \"k\": 3, \"prefill_chunk\": 4, \"cache\": {\"max_seq_len\": 40, \"buffer_length\": 48}, "
             "\"target_config\": {\"vocab_size\": 32, \"hidden_size\": 8}, \"eos_token_ids\": [1], \"methods\": {" + methods + "}}";
}

// The one-call drafts (draft_chain_k, k = 2..K): found with their signatures checked, optional (an
// older bundle has none), and only within 2..K.
void test_manifest_draft_chains() {
  const auto dir = fresh_dir("chains");
  const std::string bundle = dir.string();
  write_bundle(dir, "");
  Manifest m = read_manifest(bundle);
  CHECK(m.has_drafter);
  CHECK_EQ(m.draft_candidates, int64_t{16});
  CHECK(m.draft_chains.empty());
  CHECK(!m.has_draft_chain(2));
  write_bundle(dir, ", " + draft_chain_json(2, 2) + ", " + draft_chain_json(3, 3) + ", " + draft_chain_json(4, 4));
  m = read_manifest(bundle);
  CHECK_EQ(m.draft_chains, (std::vector<int64_t>{2, 3}));  // draft_chain_4 is beyond K = 3: never used
  CHECK(m.has_draft_chain(3) && !m.has_draft_chain(1) && !m.has_draft_chain(4));
  CHECK_EQ(draft_chain_name(3), std::string("draft_chain_3"));
  write_bundle(dir, ", " + draft_chain_json(3, 3));  // lengths may have gaps: each is used where present
  CHECK_EQ(read_manifest(bundle).draft_chains, (std::vector<int64_t>{3}));
  write_bundle(dir, ", " + draft_chain_json(3, 2));
  CHECK_THROWS(read_manifest(bundle), RunnerError, "method draft_chain_3 outputs draft_ids is int64[2], this runner expects int64[3]");
  std::filesystem::remove_all(dir);
}

// Utf8Stream: whole characters only, an unfinished one held back, invalid bytes as U+FFFD per
// maximal subpart. Expected values: Python's bytes.decode("utf-8", "replace"), which follows the
// same rule as Rust's from_utf8_lossy (what the `tokenizers` library applies).
void test_utf8() {
  const std::string fffd = "\xEF\xBF\xBD";
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600, four bytes
  Utf8Stream s;
  CHECK_EQ(s.push("a"), std::string("a"));
  CHECK_EQ(s.push(emoji.substr(0, 1)), std::string());
  CHECK_EQ(s.pending(), size_t(1));
  CHECK_EQ(s.push(emoji.substr(1, 2)), std::string());
  CHECK_EQ(s.push(emoji.substr(3) + "b\xC3"), emoji + "b");  // the character is whole, the next one starts
  CHECK_EQ(s.push("\xA9"), std::string("\xC3\xA9"));
  CHECK_EQ(s.finish(), std::string());
  CHECK_EQ(s.push("x\xE6\x97"), std::string("x"));
  CHECK_EQ(s.finish(), fffd);  // an unfinished character at the end: one U+FFFD
  CHECK_EQ(s.pending(), size_t(0));
  // Bytes that can never complete are replaced at once, not held.
  CHECK_EQ(s.push("\xFFz"), fffd + "z");
  CHECK_EQ(s.push("\xE6\x97z"), fffd + "z");            // a truncated sequence: one U+FFFD for both bytes
  CHECK_EQ(s.push("\xED\xA0\x80"), fffd + fffd + fffd);  // a surrogate: ED then two stray continuations
  CHECK_EQ(s.push("\xC0\xAF"), fffd + fffd);             // an overlong lead is never valid
  CHECK_EQ(s.push("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // above U+10FFFF
  CHECK_EQ(utf8_lossy("ok\xF0\x9F\x98"), std::string("ok") + fffd);
  CHECK_EQ(utf8_lossy("\x80\xE2\x82\xAC\xE2\x82"), fffd + "\xE2\x82\xAC" + fffd);
  // Split anywhere, streamed pieces join to the decode of the whole.
  const std::string text = "na\xC3\xAFve " + emoji + " \xE6\x97\xA5\xFF\xE6\x97";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    Utf8Stream t;
    std::string joined = t.push(text.substr(0, cut));  // one statement each: the calls are ordered
    joined += t.push(text.substr(cut));
    joined += t.finish();
    CHECK_EQ(joined, utf8_lossy(text));
  }
}

struct Group {
  const char* name;
  void (*run)();
};

const Group kGroups[] = {
    {"sha256", test_sha256},
    {"json", test_json},
    {"sampling", test_sampling},
    {"draft_policy", test_draft_policy},
    {"manifest", [] {
       test_manifest();
       test_manifest_draft_chains();
     }},
    {"utf8", test_utf8},
};

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  if (only == "--list") {
    for (const Group& g : kGroups) std::printf("%s\n", g.name);
    return 0;
  }
  bool found = false, ok = true;
  for (const Group& g : kGroups) {
    if (!only.empty() && only != g.name) continue;
    found = true;
    const int checks = g_checks, failures = g_failures;
    try {
      g.run();
    } catch (const std::exception& e) {
      ++g_failures;
      std::fprintf(stderr, "%s: uncaught exception: %s\n", g.name, e.what());
    }
    const int ran = g_checks - checks, failed = g_failures - failures;
    std::printf("[%s] %d checks, %d failed\n", g.name, ran, failed);
    if (failed > 0 || ran == 0) ok = false;
  }
  if (!found) {
    std::fprintf(stderr, "unknown test group '%s' (--list names them)\n", only.c_str());
    return 2;
  }
  return ok ? 0 : 1;
}
