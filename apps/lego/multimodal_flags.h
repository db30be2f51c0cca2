// Flags and helpers shared by the multimodal subcommands (infer, chat, encode, import).
//
// The plugin host is made before the command line is parsed, from the --plugin-dir values it holds, so
// that each loaded plugin can add its flags: `--NAME PATH` as a shorthand for `--media NAME=PATH`, and the
// extra inputs an import needs (`--NAME DIR`). The apps name no modality themselves.
#pragma once

#include <boost/program_options/options_description.hpp>
#include <boost/program_options/parsers.hpp>

#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "lego/pipeline/pipeline.h"

namespace lego::cli {

// The --plugin-dir values of `args`, read before the full parse.
std::vector<std::filesystem::path> plugin_dirs_of(const Args& args);
// A host over those directories (then LEGO_PLUGIN_PATH, then the install's plugins).
std::shared_ptr<host::PluginHost> host_for(const Args& args);

struct ModelFlags {
  std::string model_dir;
  std::vector<std::string> plugin_dirs;
  RuntimeFlags runtime;
};

// --model, --plugin-dir and the runtime flags.
boost::program_options::options_description model_flags(ModelFlags& out);

// --media [NAME=]PATH (repeatable), and --NAME PATH for each modality `host` provides whose name no flag
// of `taken` has. `shorthands` receives the names given a flag.
boost::program_options::options_description media_flags(const host::PluginHost& host,
                                                        const boost::program_options::options_description& taken,
                                                        std::vector<std::string>& shorthands);
// The media of a parsed command line, in the order given.
std::vector<MediaInput> media_of(const std::vector<boost::program_options::option>& parsed,
                                 const std::vector<std::string>& shorthands);
// "NAME=PATH" or "PATH" (a modality routed by extension); NAME is letters, digits, '_' and '-'.
MediaInput parse_media(const std::string& value);

// The pipeline of --model, made with `host`.
std::unique_ptr<Pipeline> load_pipeline(const ModelFlags& flags, std::shared_ptr<const host::PluginHost> host);

}  // namespace lego::cli
