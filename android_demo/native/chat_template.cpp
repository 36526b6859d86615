#include "chat_template.h"

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include <minja/minja.hpp>

#include "errors.h"
#include "json.h"
#include "sha256.h"

namespace mtp_edge {

namespace {

using json::Json;

const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                      "pad_token", "cls_token", "mask_token"};

// The file's text, its size and sha256 checked against the manifest's record where there is one.
std::string read_checked(const ChatTemplateFile& file) {
  std::error_code ec;
  const auto name = std::filesystem::path(file.path).filename().string();
  if (!std::filesystem::is_regular_file(file.path, ec)) {
    throw RunnerError(file.path + ": missing (listed in manifest.json); export the bundle again.");
  }
  if (file.bytes >= 0 || !file.sha256.empty()) {
    const auto size = std::filesystem::file_size(file.path, ec);
    if (ec || (file.bytes >= 0 && static_cast<int64_t>(size) != file.bytes) ||
        (!file.sha256.empty() && sha256_file(file.path) != file.sha256)) {
      throw RunnerError(file.path + ": artifact " + name + " was modified after export (sha256 does not match manifest.json); "
                        "export the bundle again.");
    }
  }
  std::ifstream in(file.path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) throw RunnerError(file.path + ": cannot read it.");
  return text.str();
}

Json read_config(const ChatTemplateFile& file) {
  try {
    Json config = json::parse(read_checked(file));
    if (!config.is_object()) throw RunnerError(file.path + ": not a tokenizer config (expected a JSON object).");
    return config;
  } catch (const json::ParseError& e) {
    throw RunnerError(file.path + ": not valid JSON (" + e.what() + "); copy the target checkpoint's tokenizer_config.json again.");
  }
}

// tokenizer_config.json's "chat_template": a string, or [{"name": "default", "template": "..."}, ...].
const std::string* template_in_config(const Json& config, const std::string& path) {
  const Json* value = json::find(config, "chat_template");
  if (value == nullptr || value->is_null()) return nullptr;
  if (value->is_string()) return &value->get_ref<const std::string&>();
  if (value->is_array()) {
    for (const Json& named : *value) {
      const Json* name = json::find(named, "name");
      const Json* text = json::find(named, "template");
      if (name && text && name->is_string() && text->is_string() && name->get<std::string>() == "default") {
        return &text->get_ref<const std::string&>();
      }
    }
  }
  throw RunnerError(path + ": chat_template is neither a template nor a list holding one named 'default'.");
}

// minja's message is the error, then " at row R, column C:" and the template lines around it, for
// every enclosing node: one line, "error (template row R, column C)".
std::string one_line(const std::string& message) {
  std::string line = message.substr(0, message.find('\n'));
  const size_t at = line.rfind(" at row ");
  if (at != std::string::npos && !line.empty() && line.back() == ':') {
    line = line.substr(0, at) + " (template " + line.substr(at + 4, line.size() - at - 5) + ")";
  }
  return line;
}

}  // namespace

struct ChatTemplate::Impl {
  std::string source;
  std::shared_ptr<minja::TemplateNode> root;
  Json special_tokens = Json::object();

  std::string render(Json messages, bool add_generation_prompt) const;
};

bool ChatTemplate::present(const ChatTemplateFile& chat_template_jinja, const ChatTemplateFile& tokenizer_config) {
  std::error_code ec;
  if (!chat_template_jinja.path.empty() && std::filesystem::is_regular_file(chat_template_jinja.path, ec)) return true;
  if (tokenizer_config.path.empty() || !std::filesystem::is_regular_file(tokenizer_config.path, ec)) return false;
  return template_in_config(read_config(tokenizer_config), tokenizer_config.path) != nullptr;
}

ChatTemplate::ChatTemplate(const ChatTemplateFile& chat_template_jinja, const ChatTemplateFile& tokenizer_config)
    : impl_(std::make_unique<Impl>()) {
  std::error_code ec;
  Json config = Json::object();
  if (!tokenizer_config.path.empty() && std::filesystem::is_regular_file(tokenizer_config.path, ec)) {
    config = read_config(tokenizer_config);
  }
  std::string where;
  if (!chat_template_jinja.path.empty() && std::filesystem::is_regular_file(chat_template_jinja.path, ec)) {
    impl_->source = read_checked(chat_template_jinja);
    where = chat_template_jinja.path;
  } else if (const std::string* text = template_in_config(config, tokenizer_config.path)) {
    impl_->source = *text;
    where = tokenizer_config.path;
  } else {
    throw RunnerError("no chat template (neither chat_template.jinja nor a \"chat_template\" in tokenizer_config.json): "
                      "the target checkpoint had none; send the prompt as plain text.");
  }
  for (const char* name : kSpecialTokens) {
    const Json* value = json::find(config, name);
    if (value != nullptr && value->is_object()) value = json::find(*value, "content");  // a serialized AddedToken
    if (value != nullptr && value->is_string()) impl_->special_tokens[name] = *value;
  }
  try {
    // transformers' Jinja environment: trim_blocks, lstrip_blocks; jinja2 drops a template's last newline.
    impl_->root = minja::Parser::parse(impl_->source, minja::Options{true, true, false});
  } catch (const std::exception& e) {
    throw RunnerError(where + ": the chat template does not parse (" + one_line(e.what()) + ").");
  }
}

ChatTemplate::~ChatTemplate() = default;

const std::string& ChatTemplate::source() const { return impl_->source; }

std::string ChatTemplate::render(const std::string& messages_json, bool add_generation_prompt) const {
  Json messages;
  try {
    messages = json::parse(messages_json);
  } catch (const json::ParseError& e) {
    throw RunnerError(std::string("chat messages: not valid JSON (") + e.what() + ").");
  }
  return impl_->render(std::move(messages), add_generation_prompt);
}

// Python's str.replace(old, new, count), count < 0 meaning all; an empty `old` matches before every
// character (UTF-8 code point) and at the end, as in Python.
static std::string replace_text(const std::string& text, const std::string& old, const std::string& with, int64_t count) {
  std::string out;
  size_t at = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    if (old.empty()) {
      out += with;
      if (at == text.size()) return out;
      size_t next = at + 1;
      while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xC0) == 0x80) ++next;
      out.append(text, at, next - at);
      at = next;
      continue;
    }
    const size_t found = text.find(old, at);
    if (found == std::string::npos) break;
    out.append(text, at, found - at).append(with);
    at = found + old.size();
  }
  return out.append(text, at, std::string::npos);
}

std::string ChatTemplate::Impl::render(Json messages, bool add_generation_prompt) const {
  if (!messages.is_array()) throw RunnerError("chat messages must be a JSON array of {\"role\", \"content\"} objects.");
  for (const Json& message : messages) {
    if (!message.is_object()) throw RunnerError("chat messages must be a JSON array of {\"role\", \"content\"} objects.");
  }
  Json values = special_tokens;
  values["messages"] = std::move(messages);
  values["tools"] = nullptr;
  values["documents"] = nullptr;
  values["add_generation_prompt"] = add_generation_prompt;
  auto context = minja::Context::make(minja::Value(values));
  context->set("strftime_now", minja::Value::callable([](const std::shared_ptr<minja::Context>&, minja::ArgumentsValue& args) {
    args.expectArgs("strftime_now", {1, 1}, {0, 0});
    const auto format = args.args[0].get<std::string>();
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm local{};
    localtime_r(&now, &local);
    std::ostringstream out;
    out << std::put_time(&local, format.c_str());
    return minja::Value(out.str());
  }));
  // Jinja's `replace` filter, s | replace(old, new[, count]) as Python's str.replace: minja has the
  // string method .replace() but not the filter, and minja looks filters up in the context.
  context->set("replace", minja::Value::callable([](const std::shared_ptr<minja::Context>&, minja::ArgumentsValue& args) {
    args.expectArgs("replace", {3, 4}, {0, 0});
    return minja::Value(replace_text(args.args[0].to_str(), args.args[1].get<std::string>(), args.args[2].get<std::string>(),
                                     args.args.size() > 3 ? args.args[3].get<int64_t>() : -1));
  }));
  try {
    return root->render(context);
  } catch (const std::exception& e) {
    throw RunnerError("chat template: " + one_line(e.what()));
  }
}

std::string ChatTemplate::render_prompt(const std::string& prompt, bool add_generation_prompt) const {
  return render({{"user", prompt}}, add_generation_prompt);
}

std::string ChatTemplate::render(const std::vector<std::pair<std::string, std::string>>& messages, bool add_generation_prompt) const {
  Json list = Json::array();
  for (const auto& [role, content] : messages) list.push_back(Json{{"role", role}, {"content", content}});
  return impl_->render(std::move(list), add_generation_prompt);
}

}  // namespace mtp_edge
