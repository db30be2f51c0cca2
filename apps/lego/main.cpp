// `lego`: the command line of the LEGO framework. `lego --help` lists the subcommands.
#include <boost/program_options/errors.hpp>
#include <c10/util/Exception.h>

#include <iostream>
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
    {"tokenize", "print the token ids of texts", lego::cli::run_tokenize},
    {"infer", "answer a question about media files, with grounding", lego::cli::run_infer},
    {"chat", "talk with a model interactively, attaching media", lego::cli::run_chat},
    {"encode", "run one medium through its modality and write every stage", lego::cli::run_encode},
    {"plugins", "list the modality plugins found, loaded or refused", lego::cli::run_plugins},
    {"probe", "show what lego reads from a media file (frames or audio)", lego::cli::run_probe},
};

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
      std::cerr << "lego " << name << ": " << lego::one_line(e.what()) << " (see lego " << name << " --help)\n";
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
