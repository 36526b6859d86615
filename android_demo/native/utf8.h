// Bytes to text for streaming: a byte-level BPE token may end inside a character (a Chinese
// character or an emoji spans several tokens; a byte-fallback token <0xNN> is one byte), so the
// bytes of the tokens decoded so far are held until they form whole UTF-8 characters.
//
// Invalid bytes become U+FFFD one per "maximal subpart" (Unicode 3.9, the rule of Rust's
// String::from_utf8_lossy, which the Python `tokenizers` library applies to a byte-level decode),
// so the pieces streamed, joined, equal the lossy decode of all the bytes at once.
#pragma once

#include <string>

namespace mtp_edge {

class Utf8Stream {
 public:
  // Appends bytes; returns the text now complete (possibly empty). An unfinished character at the
  // end is held back for the next push.
  std::string push(const std::string& bytes);
  // The held-back bytes, which can no longer be completed, as U+FFFD; resets the stream.
  std::string finish();
  // Bytes held back (an unfinished character: at most 3).
  size_t pending() const { return pending_.size(); }

 private:
  std::string pending_;
};

// The whole of `bytes` as valid UTF-8, invalid parts replaced as Utf8Stream does.
std::string utf8_lossy(const std::string& bytes);

}  // namespace mtp_edge
