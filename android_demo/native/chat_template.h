// A bundle's chat template, rendered as transformers' tokenizer.apply_chat_template(messages,
// tokenize=False, add_generation_prompt=True) renders it (runtime/tokenizer.py ChatTemplate is the
// Python side), with google/minja (vendored, third_party/minja), the Jinja engine llama.cpp uses for
// chat templates.
//
// Where transformers finds the template: chat_template.jinja, else tokenizer_config.json's
// "chat_template" (a string, or a list of named templates of which "default" is taken). The context
// is transformers': `messages`, `tools` = `documents` = none, `add_generation_prompt`, the named
// special tokens of tokenizer_config.json (bos_token, eos_token, unk_token, sep_token, pad_token,
// cls_token, mask_token: a string or an AddedToken's "content"), and the globals raise_exception and
// strftime_now; trim_blocks and lstrip_blocks on, a template's last newline dropped, as jinja2 does.
// The rendered text is encoded without the tokenizer's own special tokens (the template writes BOS),
// as apply_chat_template(tokenize=True) does: TextCodec::encode(text, false).
//
// minja's types stay behind Impl: only chat_template.cpp includes its header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mtp_edge {

// One file the template comes from, with the manifest's record of it (sha256 empty / bytes -1:
// unchecked, as for a checkpoint folder).
struct ChatTemplateFile {
  std::string path;
  std::string sha256;
  int64_t bytes = -1;
};

class ChatTemplate {
 public:
  // The template of these files (either may have an empty path: absent). Throws RunnerError when a
  // file was modified after export, is malformed, holds no template, or the template does not parse.
  ChatTemplate(const ChatTemplateFile& chat_template_jinja, const ChatTemplateFile& tokenizer_config);
  ~ChatTemplate();
  ChatTemplate(const ChatTemplate&) = delete;
  ChatTemplate& operator=(const ChatTemplate&) = delete;

  // Whether these files hold a chat template at all (chat_template.jinja exists, or
  // tokenizer_config.json has a "chat_template"), without parsing it.
  static bool present(const ChatTemplateFile& chat_template_jinja, const ChatTemplateFile& tokenizer_config);

  // The chat as text. `messages_json`: a JSON array of message objects ({"role": "user", "content":
  // "..."}; every field is passed to the template). Throws RunnerError("chat template: ...") for bad
  // messages and for the template's own raise_exception (e.g. a role it does not take).
  std::string render(const std::string& messages_json, bool add_generation_prompt = true) const;
  // One user turn.
  std::string render_prompt(const std::string& prompt, bool add_generation_prompt = true) const;
  // (role, content) turns.
  std::string render(const std::vector<std::pair<std::string, std::string>>& messages, bool add_generation_prompt = true) const;

  const std::string& source() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mtp_edge
