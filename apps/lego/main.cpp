// `lego`: the command line of the LEGO framework. `lego --help` lists the subcommands.
#include <boost/program_options/errors.hpp>
#include <c10/util/Exception.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <string_view>

#include "commands.h"
#include "lego/sdk/error.h"

namespace {

struct Entry {
  const char* name;
  const char* summary;
  int (*run)(const lego::cli::Args&);
};

constexpr Entry kCommands[] = {
    {"init-model", "make a model directory with random weights and a freshly trained tokenizer",
     lego::cli::run_init_model},
    {"generate", "continue text prompts with a model directory", lego::cli::run_generate},
    {"import", "turn a released checkpoint (HF LLaMA/Vicuna) into a lego model directory", lego::cli::run_import},
    {"quantize", "write a model directory with int8 or int4 language-model weights (CPU inference)",
     lego::cli::run_quantize},
    {"tokenize", "print the token ids of texts", lego::cli::run_tokenize},
    {"infer", "answer a question about media files, with grounding", lego::cli::run_infer},
    {"chat", "talk with a model interactively, attaching media", lego::cli::run_chat},
    {"encode", "run one medium through its modality and write every stage", lego::cli::run_encode},
    {"plugins", "list the modality plugins found, loaded or refused", lego::cli::run_plugins},
    {"probe", "show what lego reads from a media file (frames or audio)", lego::cli::run_probe},
    {"train", "run one training stage from a config (docs/training.md)", lego::cli::run_train},
    {"consolidate", "make a model directory of a training checkpoint (sharded runs included)", lego::cli::run_consolidate},
    {"synth", "write the SynthGround benchmark (generated grounding data, train/val/test)", lego::cli::run_synth},
    {"eval", "score a model on grounding data (REC, temporal, sound localisation, caption)", lego::cli::run_eval},
    {"data", "data check: validate a training config's data without training", lego::cli::run_data},
    {"convert", "turn a public dataset's annotations into the released training JSON", lego::cli::run_convert},
    {"serve", "answer an OpenAI-compatible HTTP API with grounding, batching requests, and a web page", lego::cli::run_serve},
};

// Boost's what() substitutes the offending option and value into its message template until no
// placeholder is left, so a value that itself contains one ("--temperature x%value%") loops forever.
// Where any argument holds a '%', the message is composed here from the error's type and option name.
std::string describe(const boost::program_options::error& e, const lego::cli::Args& args) {
  namespace po = boost::program_options;
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  const bool percent = std::any_of(args.begin(), args.end(), [](const std::string& a) { return a.find('%') != std::string::npos; });
  if (named == nullptr || !percent) return lego::one_line(e.what());
  const std::string option = named->get_option_name();
  const auto say = [&option](const char* before, const char* after) {
    std::string text(before);
    text.append(" '").append(option).append("'").append(after);
    return text;
  };
  if (dynamic_cast<const po::unknown_option*>(&e) != nullptr) return say("unrecognised option", "");
  if (dynamic_cast<const po::ambiguous_option*>(&e) != nullptr) return say("option", " is ambiguous");
  if (dynamic_cast<const po::required_option*>(&e) != nullptr) return say("option", " is required but missing");
  if (dynamic_cast<const po::multiple_occurrences*>(&e) != nullptr) return say("option", " is given more than once");
  if (dynamic_cast<const po::validation_error*>(&e) != nullptr) return say("the argument of option", " is invalid");
  return say("option", " is malformed");
}

void print_help() {
  std::cout << "usage: lego <command> [options]   (lego <command> --help for its options)\n\ncommands:\n";
  for (const auto& c : kCommands) std::cout << "  " << c.name << std::string(14 - std::string_view(c.name).size(), ' ') << c.summary << '\n';
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h") {
    print_help();
    return argc < 2 ? 2 : 0;
  }
  const std::string_view name = argv[1];
  lego::cli::Args args(argv + 2, argv + argc);
  for (const auto& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.run(args);
    } catch (const lego::Error& e) {
      std::cerr << "lego " << name << ": error (" << lego::error_kind_name(e.kind()) << "): " << e.what() << '\n';
      return 1;
    } catch (const boost::program_options::error& e) {
      std::cerr << "lego " << name << ": " << describe(e, args) << " (see lego " << name << " --help)\n";
      return 2;
    } catch (const c10::Error& e) {
      std::cerr << "lego " << name << ": error (torch): " << lego::one_line(e.what_without_backtrace()) << '\n';
      return 1;
    } catch (const std::bad_alloc&) {
      // Sizes are checked before they are allocated; reaching this is a bug worth reporting.
      std::cerr << "lego " << name << ": error (memory): out of memory\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "lego " << name << ": error: " << lego::one_line(e.what()) << '\n';
      return 1;
    }
  }
  std::cerr << "lego: unknown command '" << name << "' (see lego --help)\n";
  return 2;
}
