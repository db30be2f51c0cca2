// lego tokenize: token ids of texts, one JSON array per line (for checks against reference tokenizers).
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "commands.h"
#include "lego/model/language_model.h"
#include "lego/sdk/error.h"
#include "lego/sdk/files.h"

namespace lego::cli {
namespace po = boost::program_options;

int run_tokenize(const Args& args) {
  std::string model_dir;
  std::vector<std::string> texts;
  std::string in_file;
  bool no_bos = false;
  po::options_description d("tokenize");
  d.add_options()
      ("model", po::value(&model_dir)->required(), "model directory (model.ini + tokenizer)")
      ("text", po::value(&texts)->composing(), "a text to tokenize (repeatable)")
      ("in", po::value(&in_file), "a JSON-lines file of strings to tokenize")
      ("no-bos", po::bool_switch(&no_bos), "do not prepend the BOS token");
  if (!parse_args(args, d, "lego tokenize --model DIR (--text TEXT ... | --in FILE.jsonl)")) return 0;
  if (!in_file.empty()) {
    require_regular_file(in_file, "input");
    std::ifstream in(in_file);
    if (!in) throw Error(ErrorKind::Io, in_file + ": cannot open");
    int line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      if (line.empty()) continue;
      try {
        texts.push_back(nlohmann::json::parse(line).get<std::string>());
      } catch (const nlohmann::json::exception&) {
        throw Error(ErrorKind::Format, in_file + ":" + std::to_string(line_no) + ": not a JSON string");
      }
    }
  }
  if (texts.empty()) throw Error(ErrorKind::InvalidArgument, "give --text or --in");
  const std::filesystem::path dir(model_dir);
  const auto cfg = config::read_file(dir / "model.ini");
  const auto tok = tokenizer_from_model_dir(dir, cfg);
  for (const auto& t : texts) std::cout << nlohmann::json(tok.encode(t, !no_bos)).dump() << '\n';
  return 0;
}

}  // namespace lego::cli
