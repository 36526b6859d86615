// Stand-in for RE2's header: the vendored tokenizers headers include <re2/re2.h>, and
// bpe_tokenizer_base.h calls RE2::QuoteMeta to escape the special tokens it joins into one
// pattern. The runner compiles that pattern with PCRE2 (regex_pcre2.cpp), so RE2 itself and the
// abseil it needs are left out; only QuoteMeta is provided, with RE2's rule: every ASCII byte
// other than [A-Za-z0-9_] gets a backslash, NUL becomes \x00, bytes >= 0x80 (UTF-8) stay as they
// are. PCRE2 reads a backslash before any non-alphanumeric character as that literal character.
#pragma once

// <functional>: bpe_tokenizer_base.h uses std::function and gets it through the real RE2 header.
#include <functional>
#include <string>

namespace re2 {

class RE2 {
 public:
  static std::string QuoteMeta(const std::string& unquoted) {
    std::string quoted;
    quoted.reserve(unquoted.size() * 2);
    for (char c : unquoted) {
      const unsigned char u = static_cast<unsigned char>(c);
      const bool word = (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || u == '_';
      if (word || u >= 0x80) {
        quoted += c;
      } else if (u == 0) {
        quoted += "\\x00";
      } else {
        quoted += '\\';
        quoted += c;
      }
    }
    return quoted;
  }
};

}  // namespace re2
