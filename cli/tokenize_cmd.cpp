#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "tokenizer/loader.h"

namespace shardlm::cli {

RunFn AddTokenizeCommand(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto no_bos = std::make_shared<bool>(false);
  auto no_parse_special = std::make_shared<bool>(false);
  app.add_option("--model", *model, "HF model directory or .gguf file")->required();
  app.add_flag("--no-bos", *no_bos, "Do not add BOS/EOS even where the tokenizer asks for them");
  app.add_flag("--no-parse-special", *no_parse_special,
               "Treat special-token text in the input as plain text");
  return [=]() -> int {
    auto tokenizer = LoadTokenizerFromPath(*model);
    if (!tokenizer.ok()) return Fail("tokenize", std::string(tokenizer.status().message()));
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto ids = (*tokenizer)->EncodeChecked(text, !*no_bos, !*no_parse_special);
    if (!ids.ok()) return Fail("tokenize", "stdin: " + std::string(ids.status().message()));
    std::printf("%s\n", absl::StrJoin(*ids, " ").c_str());
    return 0;
  };
}

RunFn AddDetokenizeCommand(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto ids_text = std::make_shared<std::string>();
  app.add_option("--model", *model, "HF model directory or .gguf file")->required();
  app.add_option("--ids", *ids_text, "Token ids, comma separated")->required();
  return [=]() -> int {
    auto ids = ParseIds(*ids_text, "--ids");
    if (!ids.ok()) return Fail("detokenize", std::string(ids.status().message()));
    auto tokenizer = LoadTokenizerFromPath(*model);
    if (!tokenizer.ok()) return Fail("detokenize", std::string(tokenizer.status().message()));
    for (size_t i = 0; i < ids->size(); ++i) {
      if ((*ids)[i] < 0 || (*ids)[i] >= (*tokenizer)->vocab_size()) {
        return Fail("detokenize", absl::StrCat("--ids: element ", i, " is ", (*ids)[i],
                                               ", expected 0 <= id < vocab size ",
                                               (*tokenizer)->vocab_size()));
      }
    }
    std::printf("%s\n", (*tokenizer)->Decode(*ids, /*skip_special=*/false).c_str());
    return 0;
  };
}

}  // namespace shardlm::cli
