// The pybind11 module `lego._lego` (DESIGN.md, python/): core's Pipeline, plugin host, trainer and grounding
// text, bound one to one. It adds no logic of its own: every request goes through the same Pipeline::answer
// as `lego infer`, so a Python answer equals the CLI's for the same input and seed. Tensors cross as torch
// tensors through torch's own casters (no copy), long C++ work runs with the GIL released, callbacks into
// Python take it back and check for Ctrl-C, and every lego::Error reaches Python as lego.Error with its kind.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lego/config/config.h"
#include "lego/grounding/grounding.h"
#include "lego/host/plugin_host.h"
#include "lego/model/language_model.h"
#include "lego/pipeline/pipeline.h"
#include "lego/sdk/abi.h"
#include "lego/sdk/error.h"
#include "lego/train/trainer.h"

namespace py = pybind11;

namespace lego::python {
namespace {

// lego.Error, made at import; its instances carry `kind` ("invalid-argument", "not-found", ...).
PyObject* error_type = nullptr;

void raise_error(const std::string& kind, const char* message) {
  py::object e = py::reinterpret_borrow<py::object>(error_type)(message);
  e.attr("kind") = kind;
  PyErr_SetObject(error_type, e.ptr());
}

// Callbacks run with the GIL taken back; a pending signal (Ctrl-C) raises there, so that long work stops.
void check_signals() {
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

// "os.PathLike or str" -> path.
std::filesystem::path to_path(const py::handle& value, const std::string& what) {
  if (!py::isinstance<py::str>(value) && !py::hasattr(value, "__fspath__")) {
    throw Error(ErrorKind::InvalidArgument, what + ": expected a path (str or os.PathLike), got " +
                                                std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  return py::module_::import("os").attr("fspath")(value).cast<std::string>();
}

// media: None, a list of paths (routed by extension), or {modality: path or [paths]}; dict order is kept.
std::vector<MediaInput> to_media(const py::object& media) {
  std::vector<MediaInput> out;
  if (media.is_none()) return out;
  if (py::isinstance<py::dict>(media)) {
    for (const auto& [key, value] : media.cast<py::dict>()) {
      if (!py::isinstance<py::str>(key)) throw Error(ErrorKind::InvalidArgument, "media: keys are modality names (str)");
      const auto name = key.cast<std::string>();
      if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
        for (const auto& v : value) out.push_back({name, to_path(v, "media['" + name + "']")});
      } else {
        out.push_back({name, to_path(value, "media['" + name + "']")});
      }
    }
    return out;
  }
  if (py::isinstance<py::list>(media) || py::isinstance<py::tuple>(media)) {
    for (const auto& v : media) out.push_back({"", to_path(v, "media")});
    return out;
  }
  throw Error(ErrorKind::InvalidArgument, "media: expected a dict {modality: paths} or a list of paths");
}

struct BoxResult {
  std::string phrase;
  std::vector<double> box_square;            // as written: relative to the frame the model saw
  std::vector<double> box;                   // relative to its medium
  std::optional<std::vector<double>> absolute;  // in the medium's unit; None when no medium carries boxes
  std::optional<std::string> unit;
  std::optional<int> medium;
};

struct SpanResult {
  std::string phrase;
  std::pair<double, double> span;
  std::optional<std::pair<double, double>> seconds;
  std::optional<int> medium;
};

struct Result {
  std::string text;
  std::vector<int64_t> token_ids;
  std::vector<int64_t> prompt_token_ids;
  std::string finish_reason;
  std::vector<BoxResult> boxes;
  std::vector<SpanResult> spans;
  double encode_ms = 0, prefill_ms = 0, decode_ms = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

std::optional<int> medium_of(int i) { return i >= 0 ? std::optional<int>(i) : std::nullopt; }

Result to_result(const Answer& a) {
  Result r;
  r.text = a.output.text;
  r.token_ids = a.output.token_ids;
  r.prompt_token_ids = a.prompt_ids;
  r.finish_reason = a.output.finish_reason;
  for (const auto& b : a.grounding.boxes) {
    BoxResult out{b.mention.phrase, b.mention.values, b.mention.values, std::nullopt, std::nullopt, medium_of(b.medium)};
    if (b.mapped) {
      out.box = b.mapped->relative;
      out.absolute = b.mapped->absolute;
      out.unit = b.mapped->unit;
    }
    r.boxes.push_back(std::move(out));
  }
  for (const auto& s : a.grounding.spans) {
    SpanResult out{s.mention.phrase, {s.mention.span.t1, s.mention.span.t2}, std::nullopt, medium_of(s.medium)};
    if (s.mapped) out.seconds = std::make_pair(s.mapped->start_s, s.mapped->end_s);
    r.spans.push_back(std::move(out));
  }
  r.encode_ms = a.encode_ms;
  r.prefill_ms = a.timings.prefill_ms;
  r.decode_ms = a.timings.decode_ms;
  r.prompt_tokens = a.timings.prompt_tokens;
  r.generated_tokens = a.timings.generated_tokens;
  return r;
}

std::shared_ptr<host::PluginHost> make_host(const std::optional<std::vector<std::filesystem::path>>& dirs) {
  return std::make_shared<host::PluginHost>(dirs.value_or(std::vector<std::filesystem::path>{}));
}

// A model directory loaded with its plugins. Requests to one model run one at a time (the pipeline keeps
// decoding state); several models answer in parallel.
class Model {
 public:
  static std::shared_ptr<Model> load(const std::filesystem::path& dir,
                                     const std::optional<std::vector<std::filesystem::path>>& plugin_dirs,
                                     const std::string& device, const std::string& dtype) {
    auto m = std::make_shared<Model>();
    py::gil_scoped_release release;
    m->host_ = make_host(plugin_dirs);
    m->pipeline_ = Pipeline::load(dir, {parse_device(device), parse_dtype(dtype), {}}, m->host_);
    return m;
  }

  Result generate(const std::string& prompt, const py::object& media, const std::optional<std::string>& system,
                  bool raw, int64_t max_new_tokens, double temperature, int64_t top_k, double top_p,
                  double repetition_penalty, const std::vector<std::string>& stop, bool stop_at_eos, uint64_t seed,
                  uint64_t media_seed, const py::object& stream) {
    Request request;
    request.message = prompt;
    request.media = to_media(media);
    request.system = system;
    request.raw = raw;
    request.media_seed = media_seed;
    auto& s = request.sampling;
    s.max_new_tokens = max_new_tokens;
    s.temperature = temperature;
    s.top_k = top_k;
    s.top_p = top_p;
    s.repetition_penalty = repetition_penalty;
    s.stop = stop;
    s.stop_at_eos = stop_at_eos;
    s.seed = seed;
    s.validate();
    if (!stream.is_none() && !PyCallable_Check(stream.ptr())) {
      throw Error(ErrorKind::InvalidArgument, "stream: expected a callable taking the new text");
    }
    generate::StreamCallback callback = [&stream](int64_t, std::string_view piece) {
      py::gil_scoped_acquire gil;
      check_signals();
      if (!stream.is_none()) stream(py::str(piece.data(), piece.size()));
    };
    py::gil_scoped_release release;
    std::lock_guard lock(mutex_);
    return to_result(pipeline_->answer(request, {}, callback));
  }

  // [tokens, llm hidden] features of one medium: a file (loaded with `seed`) or an already loaded tensor
  // (what preprocess() returns), which is handed to the plugin as is, without a copy.
  at::Tensor encode(const std::string& modality, const py::object& input, uint64_t seed) {
    if (THPVariable_Check(input.ptr())) {
      EncodedMedia medium{modality, Media{{}, input.cast<at::Tensor>(), nullptr}, {}};
      py::gil_scoped_release release;
      std::lock_guard lock(mutex_);
      pipeline_->modality(modality);  // an unknown name is refused, listing the model's modalities
      std::vector<EncodedMedia> media{std::move(medium)};
      pipeline_->encode_loaded(media);
      return media[0].features;
    }
    const auto path = to_path(input, "encode");
    py::gil_scoped_release release;
    std::lock_guard lock(mutex_);
    return pipeline_->encode({{modality, path}}, seed)[0].features;
  }

  // The tensor a modality's plugin reads from `path` (its preprocessing), on the CPU.
  at::Tensor preprocess(const std::string& modality, const py::object& path, uint64_t seed) {
    const auto file = to_path(path, "preprocess");
    py::gil_scoped_release release;
    pipeline_->modality(modality);
    return pipeline_->load_medium({modality, file}, seed).media.tensor;
  }

  std::vector<std::string> modalities() const { return pipeline_->media_order(); }
  std::string placeholder(const std::string& modality) const {
    pipeline_->modality(modality);
    return pipeline_->placeholder(modality);
  }
  std::filesystem::path dir() const { return pipeline_->llm().dir; }
  std::string device() const { return pipeline_->llm().device.str(); }
  std::string dtype() const { return c10::toString(pipeline_->llm().dtype); }
  const std::string& system_prompt() const { return pipeline_->system_prompt(); }

 private:
  std::shared_ptr<const host::PluginHost> host_;
  std::unique_ptr<Pipeline> pipeline_;
  std::mutex mutex_;
};

py::list plugins(const std::optional<std::vector<std::filesystem::path>>& plugin_dirs) {
  std::shared_ptr<host::PluginHost> host;
  {
    py::gil_scoped_release release;
    host = make_host(plugin_dirs);
  }
  py::list out;
  for (const auto& r : host->records()) {
    py::dict d;
    d["file"] = r.file;
    d["modality"] = r.modality;
    d["loaded"] = r.loaded;
    d["reason"] = r.reason;
    d["abi_version"] = r.abi_version;
    d["sdk_version"] = r.sdk_version;
    d["torch_version"] = r.torch_version;
    d["placeholder"] = r.placeholder;
    d["tokens"] = r.tokens;
    d["file_types"] = r.file_types;
    d["box_values"] = r.grounding.box_values;
    d["spans"] = r.grounding.spans;
    out.append(d);
  }
  return out;
}

// Config values from Python: bools as INI spells them, anything else as str() does.
std::string config_value(const py::handle& value) {
  if (py::isinstance<py::bool_>(value)) return value.cast<bool>() ? "true" : "false";
  if (py::hasattr(value, "__fspath__")) return py::module_::import("os").attr("fspath")(value).cast<std::string>();
  return py::str(value).cast<std::string>();
}

py::dict train(const std::filesystem::path& config_file, const py::dict& overrides, bool resume,
               const py::object& progress, const py::object& notice,
               const std::optional<std::vector<std::filesystem::path>>& plugin_dirs) {
  auto config = config::read_file(config_file);
  for (const auto& [key, value] : overrides) {
    if (!py::isinstance<py::str>(key)) throw Error(ErrorKind::InvalidArgument, "overrides: keys are 'section.key' strings");
    config.set(key.cast<std::string>(), config_value(value));
  }
  for (const auto* f : {&progress, &notice}) {
    if (!f->is_none() && !PyCallable_Check(f->ptr())) {
      throw Error(ErrorKind::InvalidArgument, "train: progress and notice must be callables");
    }
  }
  train::Callbacks callbacks;
  callbacks.progress = [&progress](const train::Progress& p) {
    py::gil_scoped_acquire gil;
    check_signals();
    if (!progress.is_none()) progress(p);
  };
  callbacks.notice = [&notice](const std::string& line) {
    py::gil_scoped_acquire gil;
    check_signals();
    if (!notice.is_none()) notice(line);
  };
  train::StageResult r;
  {
    py::gil_scoped_release release;
    r = train::run_stage(config, make_host(plugin_dirs), resume, callbacks);
  }
  py::dict d;
  d["model_dir"] = r.model_dir;
  d["steps"] = r.steps;
  d["final_loss"] = r.final_loss;
  d["examples"] = r.examples;
  d["skipped_rows"] = r.skipped_rows;
  d["fully_masked_rows"] = r.fully_masked_rows;
  d["truncated_rows"] = r.truncated_rows;
  d["resumed"] = r.resumed;
  return d;
}

void bind_grounding(py::module_& root) {
  auto m = root.def_submodule("grounding", "Grounding text: boxes [x1, y1, x2, y2] (or 3-D) and spans {t1, t2}.");
  py::class_<grounding::BoxMention>(m, "BoxMention")
      .def_readonly("phrase", &grounding::BoxMention::phrase)
      .def_readonly("values", &grounding::BoxMention::values)
      .def_readonly("begin", &grounding::BoxMention::begin)
      .def_readonly("end", &grounding::BoxMention::end)
      .def("__repr__", [](const grounding::BoxMention& b) {
        return "BoxMention(" + std::string(py::repr(py::str(b.phrase))) + ", " + grounding::format_box_values(b.values) + ")";
      });
  py::class_<grounding::SpanMention>(m, "SpanMention")
      .def_readonly("phrase", &grounding::SpanMention::phrase)
      .def_property_readonly("span", [](const grounding::SpanMention& s) { return std::make_pair(s.span.t1, s.span.t2); })
      .def_readonly("begin", &grounding::SpanMention::begin)
      .def_readonly("end", &grounding::SpanMention::end)
      .def("__repr__", [](const grounding::SpanMention& s) {
        return "SpanMention(" + std::string(py::repr(py::str(s.phrase))) + ", " + grounding::format_span(s.span) + ")";
      });
  py::class_<grounding::Mentions>(m, "Mentions")
      .def_readonly("boxes", &grounding::Mentions::boxes)
      .def_readonly("spans", &grounding::Mentions::spans);
  m.def("parse", &grounding::parse, py::arg("text"), "Every box and span of `text`, in order, with its phrase.");
  m.def("format_box", &grounding::format_box_values, py::arg("box"),
        "A box of 4 or 6 values as the model writes it: '[0.100, 0.200, 0.300, 0.400]'.");
  m.def("format_span", [](std::pair<double, double> s) { return grounding::format_span({s.first, s.second}); },
        py::arg("span"), "A span as the model writes it: '{0.14, 0.32}'.");
  m.def("format", [](const std::vector<double>& v) {
        return v.size() == 2 ? grounding::format_span({v[0], v[1]}) : grounding::format_box_values(v);
      }, py::arg("values"),
      "What the model writes for 2 values (a span, '{0.14, 0.32}'), 4 (a box) or 6 (a 3-D box).");
  m.def("iou", [](const std::vector<double>& a, const std::vector<double>& b) {
        if (a.size() == 2 && b.size() == 2) return grounding::iou(grounding::Span{a[0], a[1]}, grounding::Span{b[0], b[1]});
        return grounding::box_iou(a, b);
      }, py::arg("a"), py::arg("b"),
      "Intersection over union of two spans (2 values), boxes (4) or 3-D boxes (6).");
}

}  // namespace
}  // namespace lego::python

PYBIND11_MODULE(_lego, m) {
  using namespace lego::python;
  namespace lg = lego;
  m.doc() = "lego: multi-modal grounding LLMs (the C++ core, bound)";
  m.attr("__version__") = LEGO_SDK_VERSION;

  error_type = PyErr_NewExceptionWithDoc("lego.Error", "A lego failure; `kind` says which (not-found, format, ...).",
                                         PyExc_RuntimeError, nullptr);
  m.attr("Error") = py::handle(error_type);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lg::Error& e) {
      raise_error(std::string(lg::error_kind_name(e.kind())), e.what());
    } catch (const c10::Error& e) {
      // libtorch refusing something (a tensor of the wrong shape handed to encode): one line, kind "torch".
      raise_error("torch", lg::one_line(e.what_without_backtrace()).c_str());
    }
  });

  py::class_<BoxResult>(m, "Box")
      .def_readonly("phrase", &BoxResult::phrase)
      .def_readonly("box", &BoxResult::box)
      .def_readonly("box_square", &BoxResult::box_square)
      .def_readonly("absolute", &BoxResult::absolute)
      .def_readonly("unit", &BoxResult::unit)
      .def_readonly("medium", &BoxResult::medium)
      .def("__repr__", [](const BoxResult& b) {
        return "Box(" + std::string(py::repr(py::str(b.phrase))) + ", " + lg::grounding::format_box_values(b.box) + ")";
      });
  py::class_<SpanResult>(m, "Span")
      .def_readonly("phrase", &SpanResult::phrase)
      .def_readonly("span", &SpanResult::span)
      .def_readonly("seconds", &SpanResult::seconds)
      .def_readonly("medium", &SpanResult::medium)
      .def("__repr__", [](const SpanResult& s) {
        return "Span(" + std::string(py::repr(py::str(s.phrase))) + ", " +
               lg::grounding::format_span({s.span.first, s.span.second}) + ")";
      });
  py::class_<Result>(m, "Result")
      .def_readonly("text", &Result::text)
      .def_readonly("token_ids", &Result::token_ids)
      .def_readonly("prompt_token_ids", &Result::prompt_token_ids)
      .def_readonly("finish_reason", &Result::finish_reason)
      .def_readonly("boxes", &Result::boxes)
      .def_readonly("spans", &Result::spans)
      .def_readonly("encode_ms", &Result::encode_ms)
      .def_readonly("prefill_ms", &Result::prefill_ms)
      .def_readonly("decode_ms", &Result::decode_ms)
      .def_readonly("prompt_tokens", &Result::prompt_tokens)
      .def_readonly("generated_tokens", &Result::generated_tokens)
      .def("__repr__", [](const Result& r) { return "Result(" + std::string(py::repr(py::str(r.text))) + ")"; });

  const lg::generate::SamplingOptions d;
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_static("load", &Model::load, py::arg("dir"), py::arg("plugin_dirs") = py::none(),
                  py::arg("device") = "cpu", py::arg("dtype") = "float32")
      .def("generate", &Model::generate, py::arg("prompt"), py::arg("media") = py::none(), py::kw_only(),
           py::arg("system") = py::none(), py::arg("raw") = false, py::arg("max_new_tokens") = 512,
           py::arg("temperature") = d.temperature, py::arg("top_k") = d.top_k, py::arg("top_p") = d.top_p,
           py::arg("repetition_penalty") = d.repetition_penalty, py::arg("stop") = std::vector<std::string>{},
           py::arg("stop_at_eos") = d.stop_at_eos, py::arg("seed") = d.seed, py::arg("media_seed") = 0,
           py::arg("stream") = py::none())
      .def("encode", &Model::encode, py::arg("modality"), py::arg("input"), py::arg("seed") = 0)
      .def("preprocess", &Model::preprocess, py::arg("modality"), py::arg("path"), py::arg("seed") = 0)
      .def("placeholder", &Model::placeholder, py::arg("modality"))
      .def_property_readonly("modalities", &Model::modalities)
      .def_property_readonly("dir", &Model::dir)
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("dtype", &Model::dtype)
      .def_property_readonly("system_prompt", &Model::system_prompt);

  py::class_<lg::train::Progress>(m, "Progress")
      .def_readonly("stage", &lg::train::Progress::stage)
      .def_readonly("step", &lg::train::Progress::step)
      .def_readonly("total_steps", &lg::train::Progress::total_steps)
      .def_readonly("epoch", &lg::train::Progress::epoch)
      .def_readonly("loss", &lg::train::Progress::loss)
      .def_readonly("lr", &lg::train::Progress::lr)
      .def_readonly("grad_norm", &lg::train::Progress::grad_norm)
      .def_readonly("tokens_per_s", &lg::train::Progress::tokens_per_s)
      .def_readonly("elapsed_s", &lg::train::Progress::elapsed_s)
      .def_readonly("eta_s", &lg::train::Progress::eta_s)
      .def_readonly("skipped_rows", &lg::train::Progress::skipped_rows);

  m.def("plugins", &plugins, py::arg("plugin_dirs") = py::none());
  m.def("train", &train, py::arg("config"), py::arg("overrides") = py::dict(), py::arg("resume") = false,
        py::arg("progress") = py::none(), py::arg("notice") = py::none(), py::arg("plugin_dirs") = py::none());
  bind_grounding(m);
}
