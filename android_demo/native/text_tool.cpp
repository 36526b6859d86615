// mtp_edge_text: the runner's tokenizer (text_codec.h) alone, without a model or ExecuTorch, so
// its ids and text can be held to the Python `tokenizers` library for any tokenizer.json, and run
// cheaply under qemu for the aarch64 build.
//
//   mtp_edge_text TOKENIZER_JSON [REQUESTS]     REQUESTS: JSON lines (default or '-': stdin)
//     {"encode": "text"}     -> {"ids": [...]}                   (special tokens added, as Python's encode)
//     {"decode": [ids]}      -> {"text": "...", "pieces": [...]}  (pieces: what TextStream gave per id, then
//                                                                  its finish(); joined they are the text)
//     {"chat": [messages]}   -> {"text": "...", "ids": [...]}     (the chat template beside the tokenizer:
//                                 chat_template.jinja or tokenizer_config.json's; "add_generation_prompt":
//                                 false to leave it off; ids: the text encoded without special tokens)
// Errors: one line "error: ..." on stderr and exit code 2, after the results already written.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <iostream>
#include <string>

#include "chat_template.h"
#include "errors.h"
#include "json.h"
#include "text_codec.h"

namespace {

using mtp_edge::RunnerError;
namespace json = mtp_edge::json;
using json::Json;

// The chat template beside the tokenizer, loaded on the first chat request.
std::unique_ptr<mtp_edge::ChatTemplate> chat_template(const std::string& tokenizer_path) {
  const auto folder = std::filesystem::path(tokenizer_path).parent_path();
  const mtp_edge::ChatTemplateFile jinja{(folder / "chat_template.jinja").string(), "", -1};
  const mtp_edge::ChatTemplateFile config{(folder / "tokenizer_config.json").string(), "", -1};
  if (!mtp_edge::ChatTemplate::present(jinja, config)) {
    throw RunnerError(folder.string() + ": no chat template (neither chat_template.jinja nor a \"chat_template\" in "
                      "tokenizer_config.json).");
  }
  return std::make_unique<mtp_edge::ChatTemplate>(jinja, config);
}

std::string ids_json(const std::vector<int64_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + "]";
}

std::string answer(const mtp_edge::TextCodec& codec, const std::string& line) {
  static std::unique_ptr<mtp_edge::ChatTemplate> chat;
  Json doc;
  try {
    doc = json::parse(line);
  } catch (const json::ParseError& e) {
    throw RunnerError(std::string("not valid JSON (") + e.what() + "); write one JSON object per line.");
  }
  try {
    if (const Json* text = json::find(doc, "encode")) {
      return "{\"ids\": " + ids_json(codec.encode(json::as_string(*text, "encode"))) + "}";
    }
    if (const Json* messages = json::find(doc, "chat")) {
      if (!chat) chat = chat_template(codec.path());
      const Json* generation = json::find(doc, "add_generation_prompt");
      json::as_array(*messages, "chat");
      const std::string text =
          chat->render(messages->dump(), generation == nullptr || json::as_bool(*generation, "add_generation_prompt"));
      return "{\"text\": " + json::quote(text) + ", \"ids\": " + ids_json(codec.encode(text, false)) + "}";
    }
    if (const Json* ids = json::find(doc, "decode")) {
      mtp_edge::TextStream stream(codec);
      std::string text, pieces;
      const auto piece = [&](const std::string& p) {
        text += p;
        pieces += (pieces.empty() ? "" : ", ") + json::quote(p);
      };
      for (const Json& id : json::as_array(*ids, "decode")) piece(stream.push(json::as_int(id, "a token id")));
      piece(stream.finish());
      return "{\"text\": " + json::quote(text) + ", \"pieces\": [" + pieces + "]}";
    }
  } catch (const json::TypeError& e) {
    throw RunnerError(std::string(e.what()) + ".");
  }
  throw RunnerError("a request is {\"encode\": \"text\"}, {\"decode\": [ids]} or {\"chat\": [messages]}.");
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
