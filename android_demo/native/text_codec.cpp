#include "text_codec.h"

#include <cctype>
#include <filesystem>
#include <unordered_map>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <pytorch/tokenizers/hf_tokenizer.h>

#include "errors.h"
#include "sha256.h"

namespace mtp_edge {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The special tokens the post-processor puts around a single sequence (tokenizers'
// TemplateProcessing "single", Bert/Roberta's cls + sep; ByteLevel adds none). HFTokenizer's own
// bos argument guesses the BOS from token names; the post-processor is what Python applies.
void special_tokens_around(const json& processor, const std::string& where, std::vector<int64_t>& before,
                           std::vector<int64_t>& after) {
  if (processor.is_null()) return;
  const std::string type = processor.at("type").get<std::string>();
  if (type == "TemplateProcessing") {
    bool seen_sequence = false;
    for (const json& piece : processor.at("single")) {
      if (piece.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
      for (const json& id : processor.at("special_tokens").at(name).at("ids")) {
        (seen_sequence ? after : before).push_back(id.get<int64_t>());
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    before.push_back(processor.at("cls").at(1).get<int64_t>());
    after.push_back(processor.at("sep").at(1).get<int64_t>());
  } else if (type == "Sequence") {
    for (const json& inner : processor.at("processors")) special_tokens_around(inner, where, before, after);
  } else if (type != "ByteLevel") {
    throw RunnerError(where + ": post_processor " + type +
                      " is not supported by the native tokenizer (TemplateProcessing, ByteLevel, Bert/RobertaProcessing, "
                      "Sequence); use the Python runtime (mtp-edge generate --bundle) for this tokenizer.");
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool has_byte_fallback_decoder(const json& decoder) {
  if (!decoder.is_object()) return false;
  const std::string type = decoder.value("type", std::string());
  if (type == "ByteFallback") return true;
  if (type == "Sequence" && decoder.contains("decoders")) {
    for (const json& inner : decoder.at("decoders")) {
      if (has_byte_fallback_decoder(inner)) return true;
    }
  }
  return false;
}

// tokenizers' ByteFallback rule: exactly "<0x" two hex digits ">".
int byte_token_value(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>' || !std::isxdigit(static_cast<unsigned char>(token[3])) ||
      !std::isxdigit(static_cast<unsigned char>(token[4]))) {
    return -1;
  }
  return std::stoi(token.substr(3, 2), nullptr, 16);
}

}  // namespace

struct TextCodec::Impl {
  std::string path;
  tokenizers::HFTokenizer tokenizer;
  std::vector<int64_t> before, after;
  std::unordered_map<int64_t, int> fallback_bytes;  // id -> byte of its <0xNN> token
};


TextCodec::TextCodec(const std::string& path, const std::string& expected_sha256, int64_t expected_bytes)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw RunnerError(path + ": no tokenizer.json, so this bundle takes and gives token ids only; export it from a "
                      "target checkpoint folder that has tokenizer.json (or copy that file into the bundle and re-export), "
                      "or pass token ids.");
  }
  if (!expected_sha256.empty()) {
    const auto size = fs::file_size(path, ec);
    if (ec || (expected_bytes >= 0 && static_cast<int64_t>(size) != expected_bytes) || sha256_file(path) != expected_sha256) {
      throw RunnerError(path + ": artifact tokenizer.json was modified after export (sha256 does not match manifest.json); "
                        "export the bundle again.");
    }
  }
  // Parsed here first (HFTokenizer parses it again) for what HFTokenizer does not read, and to name
  // what is wrong with a file it would only answer LoadFailure to.
  json doc;
  try {
    doc = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw RunnerError(path + ": not valid JSON (" + e.what() + "); copy the target checkpoint's tokenizer.json again.");
  }
  try {
    const std::string model = doc.at("model").value("type", std::string("BPE"));
    if (model != "BPE") {
      throw RunnerError(path + ": model type " + model + " is not supported by the native tokenizer (BPE only: Gemma's "
                        "and byte-level BPE tokenizers); use the Python runtime for this tokenizer.");
    }
    special_tokens_around(doc.value("post_processor", json()), path, impl_->before, impl_->after);
    if (has_byte_fallback_decoder(doc.value("decoder", json()))) {
      for (const auto& [token, id] : doc.at("model").at("vocab").items()) {
        const int byte = byte_token_value(token);
        if (byte >= 0) impl_->fallback_bytes[id.get<int64_t>()] = byte;
      }
    }
  } catch (const json::exception& e) {
    throw RunnerError(path + ": not a tokenizers tokenizer.json (" + std::string(e.what()) +
                      "); copy the target checkpoint's tokenizer.json again.");
  }
  tokenizers::Error status;
  try {
    status = impl_->tokenizer.load(path);
  } catch (const std::exception& e) {  // HFTokenizer throws for components it does not implement
    throw RunnerError(path + ": the native tokenizer (HFTokenizer) cannot load it: " + e.what() +
                      "; use the Python runtime (mtp-edge generate --bundle) for this tokenizer.");
  }
  if (status != tokenizers::Error::Ok) {
    throw RunnerError(path + ": the native tokenizer (HFTokenizer) could not load it (error " +
                      std::to_string(static_cast<int>(status)) +
                      "; it needs added_tokens, model.vocab and model.merges); copy the target checkpoint's tokenizer.json again.");
  }
}

TextCodec::~TextCodec() = default;

std::vector<int64_t> TextCodec::encode(const std::string& text, bool add_special_tokens) const {
  const auto encoded = [&] {
    try {
      return impl_->tokenizer.encode(text, /*bos=*/0, /*eos=*/0);
    } catch (const std::exception& e) {  // the library's regex and Unicode code may throw on odd input
      throw RunnerError(impl_->path + ": the native tokenizer failed on the prompt (" + e.what() + "); pass token ids instead.");
    }
  };
  auto result = encoded();
  if (!result.ok()) {
    throw RunnerError(impl_->path + ": the prompt cannot be encoded (a character outside the vocabulary and no byte "
                      "fallback or unk_token); remove it or pass token ids.");
  }
  std::vector<int64_t> ids;
  if (add_special_tokens) ids = impl_->before;
  for (const uint64_t id : result.get()) ids.push_back(static_cast<int64_t>(id));
  if (add_special_tokens) ids.insert(ids.end(), impl_->after.begin(), impl_->after.end());
  return ids;
}

std::string TextCodec::token_bytes(int64_t id) const {
  auto result = id < 0 ? tokenizers::Result<std::string>(tokenizers::Error::DecodeFailure)
                       : impl_->tokenizer.decode(0, static_cast<uint64_t>(id));
  if (!result.ok()) {
    throw RunnerError(impl_->path + ": token id " + std::to_string(id) + " is not in the tokenizer's vocabulary; "
                      "the bundle's tokenizer.json does not belong to its model, export the bundle again.");
  }
  return result.get();
}

std::string TextCodec::decode(const std::vector<int64_t>& ids) const {
  TextStream stream(*this);
  std::string text;
  for (const int64_t id : ids) text += stream.push(id);
  return text + stream.finish();
}

int TextCodec::fallback_byte(int64_t id) const {
  const auto it = impl_->fallback_bytes.find(id);
  return it == impl_->fallback_bytes.end() ? -1 : it->second;
}

std::string TextStream::push(int64_t id) {
  const int byte = codec_.fallback_byte(id);
  if (byte >= 0) {
    run_ += static_cast<char>(byte);
    return "";
  }
  std::string text = end_run();
  return text + utf8_.push(codec_.token_bytes(id));
}

std::string TextStream::finish() {
  std::string text = end_run();
  return text + utf8_.finish();
}

std::string TextStream::end_run() {
  if (run_.empty()) return "";
  const std::string valid = utf8_lossy(run_);
  // Valid as a whole: its text; else one U+FFFD per byte token, as tokenizers' ByteFallback does.
  std::string text = valid == run_ ? run_ : std::string();
  if (text.empty()) {
    for (size_t i = 0; i < run_.size(); ++i) text += "\xEF\xBF\xBD";
  }
  run_.clear();
  return utf8_.push(text);
}

int64_t TextCodec::vocab_size() const { return impl_->tokenizer.vocab_size(); }

const std::string& TextCodec::path() const { return impl_->path; }

}  // namespace mtp_edge
