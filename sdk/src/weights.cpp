#include "lego/sdk/weights.h"

#include <torch/torch.h>

#include <algorithm>
#include <sstream>

#include "lego/sdk/error.h"

namespace lego {

std::vector<std::pair<std::string, at::Tensor>> prefixed_parameters(torch::nn::Module& module, const std::string& prefix) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : module.named_parameters()) out.emplace_back(prefix + p.key(), p.value());
  return out;
}

int64_t tensor_dim(const TensorSource& source, const std::string& name, size_t dim) {
  const auto info = source.info(name);
  if (info.shape.size() <= dim) {
    throw Error(ErrorKind::Format, source.describe() + ": tensor '" + name + "' has shape " + shape_string(info.shape) +
                                       ", expected at least " + std::to_string(dim + 1) + " dimensions");
  }
  return info.shape[dim];
}

int64_t count_numbered(const std::vector<std::string>& names, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& name : names) {
    if (name.rfind(prefix, 0) != 0) continue;
    const auto rest = name.substr(prefix.size());
    const auto digits = rest.find_first_not_of("0123456789");
    if (digits == 0 || digits == std::string::npos || rest[digits] != '.' || digits > 6) continue;
    n = std::max<int64_t>(n, std::stoll(rest.substr(0, digits)) + 1);
  }
  return n;
}

bool has_prefix(const std::vector<std::string>& names, const std::string& prefix) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return n.rfind(prefix, 0) == 0; });
}

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

LoadReport load_module(torch::nn::Module& module, const TensorSource& source, const std::string& prefix,
                       std::optional<at::ScalarType> dtype) {
  LoadReport report;
  torch::NoGradGuard no_grad;
  auto fill = [&](const std::string& local, at::Tensor& target) {
    const std::string name = prefix + local;
    if (!source.contains(name)) {
      throw Error(ErrorKind::NotFound, source.describe() + ": missing tensor '" + name + "' (expected shape " +
                                           shape_string(target.sizes()) + ")");
    }
    const TensorInfo info = source.info(name);
    if (at::IntArrayRef(info.shape) != target.sizes()) {
      throw Error(ErrorKind::Format, info.file.string() + ": tensor '" + name + "' has shape " +
                                         shape_string(info.shape) + ", the model expects " +
                                         shape_string(target.sizes()));
    }
    // `dtype` is for floating-point tensors; integer ones (quantised blocks, ids) keep their own.
    const auto want = dtype && at::isFloatingType(target.scalar_type()) ? *dtype : target.scalar_type();
    // A converted integer or boolean tensor would load as plausible-looking floats: refuse the kind change.
    if (at::isFloatingType(target.scalar_type()) != at::isFloatingType(info.dtype) ||
        at::isComplexType(info.dtype)) {
      throw Error(ErrorKind::Format, info.file.string() + ": tensor '" + name + "' is " +
                                         std::string(c10::toString(info.dtype)) + ", the model expects " +
                                         (at::isFloatingType(target.scalar_type()) ? "a floating-point tensor"
                                                                                   : std::string(c10::toString(target.scalar_type()))));
    }
    at::Tensor value = source.get(name);
    if (value.scalar_type() != want || value.device() != target.device()) {
      value = value.to(target.device(), want);
    }
    // The module's own (uninitialised) storage is dropped; the source's is adopted as is.
    target.set_data(value);
    report.loaded.push_back(name);
  };
  for (auto& item : module.named_parameters(/*recurse=*/true)) fill(item.key(), item.value());
  for (auto& item : module.named_buffers(/*recurse=*/true)) fill(item.key(), item.value());
  std::sort(report.loaded.begin(), report.loaded.end());
  for (const auto& name : source.names()) {
    if (name.rfind(prefix, 0) == 0 && !std::binary_search(report.loaded.begin(), report.loaded.end(), name)) {
      report.unused.push_back(name);
    }
  }
  return report;
}

}  // namespace lego
