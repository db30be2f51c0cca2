// The loss curve of a training run as a PNG, from its metrics.jsonl (lego train writes it after a stage).
#pragma once

#include <filesystem>

namespace lego::cli {

// Plots loss against step, one line per stage found in `metrics`; writes `out` atomically. Does nothing
// when the log has fewer than two points.
void write_loss_plot(const std::filesystem::path& metrics, const std::filesystem::path& out);

}  // namespace lego::cli
