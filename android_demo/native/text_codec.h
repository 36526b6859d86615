// Text in and out of the runner: a bundle's tokenizer.json through tokenizers::HFTokenizer (the
// C++ tokenizer library of ExecuTorch's LLM runners, vendored under third_party/tokenizers).
//
// encode() gives the ids the Python runtime's TextCodec gives (tokenizers' Tokenizer.encode with
// its special tokens: the post-processor's BOS), token_bytes() the bytes one token decodes to, and
// TextStream joins those bytes into text as whole UTF-8 characters arrive. HFTokenizer's types stay
// behind Impl so that runner.h, the C API and the JNI bridge need none of its headers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "utf8.h"

namespace mtp_edge {

class TextCodec {
 public:
  // Loads a tokenizer.json; throws RunnerError naming the problem and the fix. expected_sha256 /
  // expected_bytes (the manifest's record, empty / -1: unchecked) catch a file changed after export.
  explicit TextCodec(const std::string& path, const std::string& expected_sha256 = "", int64_t expected_bytes = -1);
  ~TextCodec();
  TextCodec(const TextCodec&) = delete;
  TextCodec& operator=(const TextCodec&) = delete;

  // The ids of `text` with the post-processor's special tokens around them (BOS for Gemma), as the
  // Python `tokenizers` Tokenizer.encode(text).ids; add_special_tokens = false: without them, as
  // encode(text, add_special_tokens=False) (a rendered chat template, which writes its own BOS).
  // Throws RunnerError if the text cannot be encoded.
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const;
  // The bytes one token decodes to through the tokenizer's decoder (special tokens as their text);
  // not always whole characters. Throws RunnerError for an id outside the vocabulary.
  std::string token_bytes(int64_t id) const;
  // The text of `ids` at once (invalid UTF-8 as U+FFFD), as the streamed pieces joined.
  std::string decode(const std::vector<int64_t>& ids) const;
  // The byte of a byte-fallback token (<0xNN>) when the decoder has ByteFallback, else -1. Python's
  // ByteFallback decodes a run of them together (invalid UTF-8: one U+FFFD per token), so
  // TextStream holds such runs whole.
  int fallback_byte(int64_t id) const;
  int64_t vocab_size() const;
  const std::string& path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Generated ids to text pieces, each whole UTF-8: push() returns what the new token completes
// (often empty mid-character), finish() what is left (an unfinished character, as U+FFFD). Joined,
// the pieces are byte for byte the Python `tokenizers` decode of the ids (skip_special_tokens off).
class TextStream {
 public:
  explicit TextStream(const TextCodec& codec) : codec_(codec) {}
  std::string push(int64_t id);
  std::string finish();

 private:
  std::string end_run();  // the held byte-fallback run as Python's ByteFallback decodes it

  const TextCodec& codec_;
  Utf8Stream utf8_;
  std::string run_;  // bytes of consecutive byte-fallback tokens
};

}  // namespace mtp_edge
