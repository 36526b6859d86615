// Replaces the vendored library's src/regex.cpp, whose create_regex tries RE2 first: here PCRE2 is
// the only engine. It takes the look-ahead patterns RE2 refuses (e.g. GPT-2's \s+(?!\S)), and
// upstream's last resort behind it, std::regex, is left out (std_regex.cpp: 6 s of build time for
// a path no pattern PCRE2 compiles reaches). escape() and the fallback hooks keep upstream's code.
#include <pytorch/tokenizers/pcre2_regex.h>
#include <pytorch/tokenizers/regex.h>

namespace tokenizers {

namespace {

Result<std::unique_ptr<IRegex>> pcre2_regex(const std::string& pattern) {
  auto pcre2 = std::make_unique<Pcre2Regex>();
  if (pcre2->compile(pattern) == Error::Ok) {
    return static_cast<std::unique_ptr<IRegex>>(std::move(pcre2));
  }
  return Error::RegexFailure;
}

FallbackRegexFn fallback_regex = pcre2_regex;

}  // namespace

bool register_override_fallback_regex(FallbackRegexFn fn) {
  fallback_regex = fn;
  return true;
}

FallbackRegexFn get_fallback_regex() {
  return fallback_regex;
}

std::string IRegex::escape(const std::string& input) {
  std::string result;
  result.reserve(input.size() * 2);
  for (char c : input) {
    if (c == '\\' || c == '^' || c == '$' || c == '.' || c == '|' || c == '?' || c == '*' || c == '+' || c == '(' ||
        c == ')' || c == '[' || c == ']' || c == '{' || c == '}') {
      result += '\\';
    }
    result += c;
  }
  return result;
}

Result<std::unique_ptr<IRegex>> create_regex(const std::string& pattern) {
  return get_fallback_regex()(pattern);
}

}  // namespace tokenizers
