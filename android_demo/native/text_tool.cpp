// mtp_edge_text: the runner's tokenizer (text_codec.h) alone, without a model or ExecuTorch, so
// its ids and text can be held to the Python `tokenizers` library for any tokenizer.json, and run
// cheaply under qemu for the aarch64 build.
//
//   mtp_edge_text TOKENIZER_JSON [REQUESTS]     REQUESTS: JSON lines (default or '-': stdin)
//     {"encode": "text"}     -> {"ids": [...]}                   (special tokens added, as Python's encode)
//     {"decode": [ids]}      -> {"text": "...", "pieces": [...]}  (pieces: what TextStream gave per id, then
//                                                                  its finish(); joined they are the text)
// Errors: one line "error: ..." on stderr and exit code 2, after the results already written.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "errors.h"
#include "json.h"
#include "text_codec.h"

namespace {

using mtp_edge::RunnerError;
using mtp_edge::json::Value;

std::string answer(const mtp_edge::TextCodec& codec, const std::string& line) {
  Value doc;
  try {
    doc = Value::parse(line);
  } catch (const mtp_edge::json::ParseError& e) {
    throw RunnerError(std::string("not valid JSON (") + e.what() + "); write one JSON object per line.");
  }
  try {
    if (const Value* text = doc.find("encode")) {
      std::string out = "{\"ids\": [";
      const auto ids = codec.encode(text->as_string("encode"));
      for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
      return out + "]}";
    }
    if (const Value* ids = doc.find("decode")) {
      mtp_edge::TextStream stream(codec);
      std::string text, pieces;
      const auto piece = [&](const std::string& p) {
        text += p;
        pieces += (pieces.empty() ? "" : ", ") + mtp_edge::json::quote(p);
      };
      for (const Value& id : ids->as_array("decode")) piece(stream.push(id.as_int("a token id")));
      piece(stream.finish());
      return "{\"text\": " + mtp_edge::json::quote(text) + ", \"pieces\": [" + pieces + "]}";
    }
  } catch (const mtp_edge::json::TypeError& e) {
    throw RunnerError(std::string(e.what()) + ".");
  }
  throw RunnerError("a request is {\"encode\": \"text\"} or {\"decode\": [ids]}.");
}

int fail(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) return fail("usage: mtp_edge_text TOKENIZER_JSON [REQUESTS]");
  try {
    const mtp_edge::TextCodec codec(argv[1]);
    const std::string source = argc == 3 ? argv[2] : "-";
    std::ifstream file;
    if (source != "-") {
      file.open(source);
      if (!file) return fail(source + ": cannot open the requests file.");
    }
    std::istream& in = source == "-" ? std::cin : file;
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        std::printf("%s\n", answer(codec, line).c_str());
        std::fflush(stdout);
      } catch (const RunnerError& e) {
        return fail("request line " + std::to_string(number) + ": " + e.what());
      }
    }
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
