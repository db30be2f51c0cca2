// lego serve: the model behind an OpenAI-compatible HTTP API, with grounding, continuous batching and a
// web page (docs/serve.md).
//
// HTTP is cpp-httplib's: a pool of threads, one per connection. A chat request is parsed and its media
// written into the server's folder on that thread, then queued; one scheduler thread prepares queued
// requests (encoding their media) into free rows of a generate::ContinuousBatcher and steps the batch, so
// every request in flight advances by one token per step. Replies are written by the request's own thread
// as its text arrives (server-sent events) or when it ends.
#include <httplib.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "commands.h"
#include "lego/generate/batcher.h"
#include "lego/sdk/error.h"
#include "multimodal_flags.h"
#include "openai_api.h"
#include "web_page.h"

namespace lego::cli {
namespace {
namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct ServeFlags {
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t max_batch = 8;
  int64_t max_queue = 64;
  int64_t max_upload_mb = 32;
  int64_t max_tokens = 512;
  int64_t timeout_s = 300;
  int http_threads = 256;
  std::string api_key;
  std::string model_name;
};

// One chat request from its arrival to its reply.
struct Job {
  uint64_t number = 0;
  std::string id;
  int64_t created = 0;
  api::ChatRequest chat;
  std::vector<EncodedMedia> loaded;  // its media, decoded on the request's thread, encoded by the scheduler
  std::filesystem::path folder;  // its media; removed with the job
  Clock::time_point arrived, deadline;

  std::mutex m;
  std::condition_variable cv;
  std::deque<std::string> pieces;  // streamed text not yet written
  bool started = false;  // prepared and decoding: a stream's status is then 200
  bool done = false;
  std::optional<Answer> answer;
  int error_status = 0;  // set with error_message when the job failed
  std::string error_message, error_param;
  std::atomic<bool> abandoned{false};  // the client went away

  void fail(int status, const std::string& message, const std::string& param = "") {
    std::lock_guard<std::mutex> lock(m);
    error_status = status;
    error_message = message;
    error_param = param;
    done = true;
    cv.notify_all();
  }
  ~Job() {
    std::error_code ec;
    std::filesystem::remove_all(folder, ec);
  }
};

// Prometheus text of the server's counters.
struct Metrics {
  std::mutex m;
  std::map<int, int64_t> responses;  // by HTTP status
  int64_t prompt_tokens = 0, completion_tokens = 0;
  double decode_seconds = 0;   // wall time the batch spent stepping
  double prepare_seconds = 0;  // wall time spent preparing requests (media encoding, splicing)
  double prefill_seconds = 0;  // wall time spent prefilling prompts
  static constexpr std::array<double, 10> kBuckets = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
  std::array<int64_t, kBuckets.size()> latency{};
  int64_t latency_count = 0;
  double latency_sum = 0;

  void response(int status) {
    std::lock_guard<std::mutex> lock(m);
    ++responses[status];
  }
  void finished(double seconds) {
    std::lock_guard<std::mutex> lock(m);
    for (size_t i = 0; i < kBuckets.size(); ++i) latency[i] += seconds <= kBuckets[i] ? 1 : 0;
    ++latency_count;
    latency_sum += seconds;
  }
};

// `message` without the server's files: a request's media named by their file name alone, and no plugin's
// library path (" (/.../liblego_plugin_image.so)").
std::string scrub(std::string message, const std::filesystem::path& folder) {
  const std::string prefix = folder.string() + "/";
  for (size_t at; (at = message.find(prefix)) != std::string::npos;) message.erase(at, prefix.size());
  for (size_t at = 0; (at = message.find(" (/", at)) != std::string::npos;) {
    const size_t end = message.find(')', at);
    if (end != std::string::npos && end > 4 && message.compare(end - 3, 3, ".so") == 0) message.erase(at, end + 1 - at);
    else at += 3;
  }
  return message;
}

int error_status_of(const Error& e);

// Ends `job` with the error `error`: a lego::Error while its input is read or prepared is the request's fault
// (its status by kind); anything during generation, and any other exception, is the server's (500).
void fail_with(Job& job, std::exception_ptr error, bool input) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    const int status = error_status_of(e);
    job.fail(input || status != 400 ? status : 500, scrub(e.what(), job.folder), input ? "messages" : "");
  } catch (const c10::Error& e) {
    job.fail(500, scrub(e.what_without_backtrace(), job.folder));
  } catch (const std::exception& e) {
    job.fail(500, scrub(e.what(), job.folder));
  } catch (...) {
    job.fail(500, "internal error");
  }
}

int error_status_of(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::InvalidArgument:
    case ErrorKind::Format:
    case ErrorKind::NotFound:
    case ErrorKind::Unsupported:
      return 400;
    default:
      return 500;
  }
}

class Server {
 public:
  Server(std::unique_ptr<Pipeline> pipeline, ServeFlags flags, std::filesystem::path folder)
      : pipeline_(std::move(pipeline)), flags_(std::move(flags)), folder_(std::move(folder)),
        batcher_(pipeline_->llm().net, pipeline_->llm().tokenizer, flags_.max_batch) {
    limits_.max_media_bytes = static_cast<uint64_t>(flags_.max_upload_mb) << 20;
    limits_.max_tokens = flags_.max_tokens;
  }

  void run() {
    httplib::Server http;
    const int threads = flags_.http_threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    // A body is at most the request's media in base64 (4/3 of --max-upload-mb) and 1 MiB of JSON around them.
    // httplib holds bodies without a Content-Length (chunked uploads) to it; the pre-routing handler refuses a
    // larger Content-Length before reading the body.
    const size_t max_body = static_cast<size_t>(flags_.max_upload_mb) * (1u << 20) / 3 * 4 + (1u << 20);
    http.set_payload_max_length(max_body);
    http.set_keep_alive_timeout(2);  // an idle connection holds a thread this long at most
    http.set_read_timeout(30);
    http.set_write_timeout(30);
    http.set_pre_routing_handler([this, max_body](const httplib::Request& req, httplib::Response& res) {
      // Headers are read, the body is not. Bodies come plain and with one Content-Length: httplib would inflate a
      // compressed body past any limit, and does not hold chunked bodies to one; both could hide a smuggled request.
      if (req.has_header("Content-Encoding")) {
        res.set_header("Connection", "close");
        reply_error(res, 415, "compressed request bodies (Content-Encoding) are not accepted", "invalid_request_error", "");
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.has_header("Transfer-Encoding") || req.get_header_value_count("Content-Length") > 1) {
        res.set_header("Connection", "close");
        reply_error(res, 400, "send the body with one Content-Length, not chunked", "invalid_request_error", "");
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.method == "POST" && !req.has_header("Content-Length")) {
        res.set_header("Connection", "close");
        reply_error(res, 411, "a request body needs a Content-Length", "invalid_request_error", "");
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.has_header("Content-Length")) {
        const std::string length = req.get_header_value("Content-Length");
        const bool digits = !length.empty() && length.find_first_not_of("0123456789") == std::string::npos;
        if (!digits) {
          res.set_header("Connection", "close");
          reply_error(res, 400, "Content-Length must be a number of bytes", "invalid_request_error", "");
          return httplib::Server::HandlerResponse::Handled;
        }
        if (length.size() >= 19 || std::stoull(length) > max_body) {
          res.set_header("Connection", "close");
          reply_error(res, 413, "the request body is over the limit of " + std::to_string(max_body) + " bytes",
                      "invalid_request_error", "");
          return httplib::Server::HandlerResponse::Handled;
        }
      }
      if (!flags_.api_key.empty() && req.path.rfind("/v1/", 0) == 0 &&
          req.get_header_value("Authorization") != "Bearer " + flags_.api_key) {
        reply_error(res, 401, "a valid API key is required (Authorization: Bearer KEY)", "authentication_error", "");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      reply_error(res, 500, what, "server_error", "");
    });
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      const int status = res.status;
      // httplib holds form-encoded bodies (curl -d without a Content-Type) to 8 KiB.
      const bool form = req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0;
      const std::string message = status == 404   ? "no such endpoint"
                                  : status == 413 && form ? "send the body as JSON: Content-Type: application/json"
                                  : status == 413 ? "the request body is over the upload limit"
                                                  : "the request was refused (HTTP " + std::to_string(status) + ")";
      reply_error(res, status, message, "invalid_request_error", "");
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(kWebPage, "text/html; charset=utf-8"); });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(json({{"status", draining_ ? "draining" : "ok"}}).dump(), "application/json");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      json models = {{"object", "list"},
                     {"data", json::array({{{"id", flags_.model_name}, {"object", "model"}, {"created", started_}, {"owned_by", "lego"},
                                            {"modalities", pipeline_->media_order()}}})}};
      res.set_content(models.dump(), "application/json");
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { res.set_content(metrics_text(), "text/plain; version=0.0.4"); });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { chat(req, res); });

    if (flags_.port == 0) {
      flags_.port = http.bind_to_any_port(flags_.host);
      if (flags_.port <= 0) throw Error(ErrorKind::Io, "lego serve: cannot listen on " + flags_.host);
    } else if (!http.bind_to_port(flags_.host, flags_.port)) {
      throw Error(ErrorKind::Io, "lego serve: cannot listen on " + flags_.host + ":" + std::to_string(flags_.port));
    }
    std::thread scheduler([this] { schedule(); });
    // SIGTERM/SIGINT (blocked in every thread, see run_serve): stop taking requests, finish those in flight, stop.
    std::thread signals([this, &http] {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGTERM);
      sigaddset(&set, SIGINT);
      sigaddset(&set, SIGUSR1);
      int sig = 0;
      sigwait(&set, &sig);
      std::cerr << "lego serve: shutting down: finishing the requests in flight" << std::endl;
      draining_ = true;
      {
        std::unique_lock<std::mutex> lock(queue_m_);
        queue_cv_.notify_all();
        idle_cv_.wait(lock, [this] { return queue_.empty() && active_ == 0; });
      }
      // Replies still being written finish on their threads before listen() returns; a connection that never
      // finishes its request (a client sending a byte at a time) must not hold the exit: after 10 s, go.
      http.stop();
      std::unique_lock<std::mutex> lock(queue_m_);
      if (!idle_cv_.wait_for(lock, std::chrono::seconds(10), [this] { return stopping_; })) {
        std::cerr << "lego serve: connections still open 10 s after the last answer; stopped" << std::endl;
        std::error_code ec;
        std::filesystem::remove_all(folder_, ec);
        std::_Exit(0);
      }
    });
    std::cerr << "lego serve: " << flags_.model_name << " on http://" << flags_.host << ":" << flags_.port << "/ (max batch "
              << flags_.max_batch << ", queue " << flags_.max_queue << ")" << std::endl;
    http.listen_after_bind();
    {
      std::lock_guard<std::mutex> lock(queue_m_);
      stopping_ = true;
      queue_cv_.notify_all();
      idle_cv_.notify_all();
    }
    scheduler.join();
    signals.join();
    std::cerr << "lego serve: stopped" << std::endl;
  }

 private:
  void reply_error(httplib::Response& res, int status, const std::string& message, std::string type,
                   const std::string& param) {
    res.status = status;
    if (status >= 500 && type == "invalid_request_error") type = "server_error";
    res.set_content(api::error_body(one_line(message), type, param).dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
    metrics_.response(status);
  }

  void chat(const httplib::Request& req, httplib::Response& res) {
    if (draining_) {
      res.set_header("Retry-After", "5");
      return reply_error(res, 503, "the server is shutting down", "server_error", "");
    }
    auto job = std::make_shared<Job>();
    job->number = ++jobs_seen_;
    job->id = "chatcmpl-" + std::to_string(started_) + "-" + std::to_string(job->number);
    job->created = static_cast<int64_t>(std::time(nullptr));
    job->arrived = Clock::now();
    job->deadline = job->arrived + std::chrono::seconds(flags_.timeout_s);
    job->folder = folder_ / ("request-" + std::to_string(job->number));
    try {
      {  // refuse early when the queue is full: before anything is decoded
        std::lock_guard<std::mutex> lock(queue_m_);
        if (static_cast<int64_t>(queue_.size()) >= flags_.max_queue) {
          res.set_header("Retry-After", "2");
          return reply_error(res, 503, "the queue is full (" + std::to_string(flags_.max_queue) + " requests); retry later",
                             "server_error", "");
        }
      }
      std::filesystem::create_directory(job->folder);
      job->chat = api::parse_chat_request(req.body, job->folder, limits_);
      api::choose_modalities(job->chat, *pipeline_);  // a modality for each medium, or a 400
      const auto placed = pipeline_->place_media(job->chat.request.message, job->chat.request.media);
      // The prompt's length from its tokens, here, before the scheduler embeds anything.
      const auto& request = job->chat.request;
      const int64_t context = pipeline_->llm().options.max_position();
      size_t text_bytes = request.message.size() + request.system.value_or("").size();
      for (const auto& t : request.history) text_bytes += t.human.size() + t.assistant.size();
      if (text_bytes > static_cast<size_t>(context) * 64) {  // far past the context whatever the tokenizer
        throw api::ApiError(400, "messages", "messages: " + std::to_string(text_bytes) + " bytes of text is longer than the model context of " + std::to_string(context) + " tokens");
      }
      const auto tokens = static_cast<int64_t>(pipeline_->tokenizer().encode(pipeline_->expand(pipeline_->prompt(request, placed))).size()) + 1;
      if (tokens > context) {
        throw api::ApiError(400, "messages", "messages: a prompt of " + std::to_string(tokens) + " tokens is longer than the model context of " + std::to_string(context));
      }
      // Decoding the media is the slow part of preparing a request, and thread-safe: it runs here, beside
      // the batch's decoding, and a medium that does not decode is refused before the request is queued.
      {
        // At most one per core: more threads decoding media, each with libtorch's and FFmpeg's own thread
        // teams, would starve the batch's decoding of the cores. Fewer (half the cores, one on 2 cores)
        // let media decoding pace the arrivals while the scheduler waited for them.
        std::unique_lock<std::mutex> gate(load_m_);
        load_cv_.wait(gate, [this] { return loading_ < max_loading_; });
        ++loading_;
      }
      struct Release {
        Server* s;
        ~Release() {
          std::lock_guard<std::mutex> gate(s->load_m_);
          --s->loading_;
          s->load_cv_.notify_one();
        }
      } release{this};
      job->loaded = pipeline_->load_media(job->chat.request);
    } catch (const api::ApiError& e) {
      return reply_error(res, e.status, e.what(), "invalid_request_error", e.param);
    } catch (const Error& e) {
      // A plugin failing on a medium is the medium's fault here: it is the request's input.
      const int status = e.kind() == ErrorKind::Plugin || e.kind() == ErrorKind::Io ? 400 : error_status_of(e);
      return reply_error(res, status, scrub(e.what(), job->folder), "invalid_request_error", "messages");
    }
    {
      std::lock_guard<std::mutex> lock(queue_m_);
      if (static_cast<int64_t>(queue_.size()) >= flags_.max_queue) {
        res.set_header("Retry-After", "2");
        return reply_error(res, 503, "the queue is full (" + std::to_string(flags_.max_queue) + " requests); retry later",
                           "server_error", "");
      }
      queue_.push_back(job);
      queue_cv_.notify_all();
    }
    std::unique_lock<std::mutex> lock(job->m);
    // A stream starts (HTTP 200) once its request is prepared, so that a medium that does not decode is a 4xx.
    job->cv.wait(lock, [&] { return job->done || (job->chat.stream && job->started); });
    if (job->chat.stream && job->error_status == 0) {
      lock.unlock();
      return stream(job, res);
    }
    if (job->error_status != 0) return reply_error(res, job->error_status, job->error_message, "invalid_request_error", job->error_param);
    res.set_content(api::completion(job->id, job->created, flags_.model_name, *job->answer)
                        .dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
    metrics_.response(200);
  }

  void stream(const std::shared_ptr<Job>& job, httplib::Response& res) {
    metrics_.response(200);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, first = true](size_t, httplib::DataSink& sink) mutable {
          auto send = [&](const json& j) {
            const std::string event = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
            return sink.write(event.data(), event.size());
          };
          std::unique_lock<std::mutex> lock(job->m);
          job->cv.wait(lock, [&] { return job->done || !job->pieces.empty(); });
          std::string text;
          while (!job->pieces.empty()) {
            text += job->pieces.front();
            job->pieces.pop_front();
          }
          const bool done = job->done;
          lock.unlock();
          if (!text.empty() || first) {
            if (!send(api::chunk(job->id, job->created, flags_.model_name, text, first))) {
              job->abandoned = true;
              return false;
            }
            first = false;
          }
          if (!done) return true;
          if (job->error_status != 0) {
            send(api::error_body(job->error_message, "server_error", job->error_param));
          } else {
            auto last = api::chunk(job->id, job->created, flags_.model_name, "", false, &*job->answer);
            send(last);
            if (job->chat.include_usage) {
              json usage = api::completion(job->id, job->created, flags_.model_name, *job->answer)["usage"];
              send({{"id", job->id}, {"object", "chat.completion.chunk"}, {"created", job->created},
                    {"model", flags_.model_name}, {"choices", json::array()}, {"usage", usage}});
            }
          }
          const std::string end = "data: [DONE]\n\n";
          sink.write(end.data(), end.size());
          sink.done();
          return true;
        },
        [job](bool success) {
          if (!success) job->abandoned = true;
        });
  }

  // The scheduler thread: admits queued jobs into free rows of the batch, drops abandoned or late ones, steps.
  void schedule() {
    for (;;) {
      std::vector<std::shared_ptr<Job>> admit;
      {
        std::unique_lock<std::mutex> lock(queue_m_);
        queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty() || !running_.empty(); });
        if (stopping_ && queue_.empty() && running_.empty()) return;
        while (!queue_.empty() && static_cast<int64_t>(running_.size() + admit.size()) < flags_.max_batch) {
          admit.push_back(queue_.front());
          queue_.pop_front();
          ++active_;
        }
      }
      if (!admit.empty()) start(std::move(admit));
      const auto now = Clock::now();
      for (auto it = running_.begin(); it != running_.end();) {
        auto& job = it->second.job;
        const bool late = now > job->deadline;
        if (job->abandoned || late) {
          batcher_.cancel(it->first);
          if (late) job->fail(504, "the request took longer than the server's limit of " + std::to_string(flags_.timeout_s) + " s");
          else job->fail(499, "the client went away");
          it = running_.erase(it);
          job_ended();
        } else {
          ++it;
        }
      }
      if (!batcher_.empty()) {
        const auto t0 = Clock::now();
        batcher_.step();
        std::lock_guard<std::mutex> lock(metrics_.m);
        metrics_.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      }
    }
  }

  struct Running {
    std::shared_ptr<Job> job;
    std::shared_ptr<PreparedRequest> prepared;
  };

  // Prepares the admitted jobs together (their media encoded in one batch per modality) and adds each to the batch.
  void start(std::vector<std::shared_ptr<Job>> jobs) {
    std::vector<std::shared_ptr<Job>> live;
    for (auto& job : jobs) {
      if (job->abandoned) {
        job->fail(499, "the client went away");
        job_ended();
      } else {
        live.push_back(job);
      }
    }
    if (live.empty()) return;
    std::vector<Request> requests;
    std::vector<std::vector<EncodedMedia>> loaded;
    for (const auto& job : live) {
      requests.push_back(job->chat.request);
      loaded.push_back(std::move(job->loaded));
    }
    std::vector<std::exception_ptr> errors;
    std::vector<PreparedRequest> prepared;
    const auto t0 = Clock::now();
    try {
      prepared = pipeline_->prepare_all(requests, std::move(loaded), errors);
    } catch (...) {
      errors.assign(live.size(), std::current_exception());
      prepared.resize(live.size());
    }
    const auto t1 = Clock::now();
    auto refuse = [this](const std::shared_ptr<Job>& job, std::exception_ptr error) {
      fail_with(*job, error, /*input=*/true);
      job_ended();
    };
    // Those prepared are prefilled together; should that fail, one by one, so that only a culprit fails.
    std::vector<std::pair<std::shared_ptr<Job>, std::shared_ptr<PreparedRequest>>> ready;
    for (size_t i = 0; i < live.size(); ++i) {
      if (errors[i]) refuse(live[i], errors[i]);
      else ready.emplace_back(live[i], std::make_shared<PreparedRequest>(std::move(prepared[i])));
    }
    try {
      std::vector<generate::Sequence> seqs;
      for (const auto& [job, p] : ready) seqs.push_back(sequence_for(job, p));
      const auto ids = batcher_.add_all(std::move(seqs));
      for (size_t i = 0; i < ready.size(); ++i) started(ready[i].first, ready[i].second, ids[i]);
    } catch (...) {
      for (const auto& [job, p] : ready) {
        try {
          started(job, p, batcher_.add(sequence_for(job, p)));
        } catch (...) {
          refuse(job, std::current_exception());
        }
      }
    }
    std::lock_guard<std::mutex> lock(metrics_.m);
    metrics_.prepare_seconds += std::chrono::duration<double>(t1 - t0).count();
    metrics_.prefill_seconds += std::chrono::duration<double>(Clock::now() - t1).count();
  }

  generate::Sequence sequence_for(const std::shared_ptr<Job>& job, const std::shared_ptr<PreparedRequest>& prepared) {
    generate::Sequence seq;
    seq.embeds = prepared->spliced.embeds;
    seq.prompt_ids = prepared->spliced.ids.front();
    seq.options = prepared->sampling;
    if (job->chat.stream) {
      seq.on_text = [job](std::string_view piece) {
        std::lock_guard<std::mutex> lock(job->m);
        job->pieces.emplace_back(piece);
        job->cv.notify_all();
      };
    }
    // on_done runs inside batcher_.step(), on this thread.
    seq.on_done = [this, job, prepared](generate::GenerationOutput out, std::exception_ptr error) {
      auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& r) { return r.second.job == job; });
      if (it != running_.end()) running_.erase(it);
      try {
        if (error) std::rethrow_exception(error);
        {
          std::lock_guard<std::mutex> lock(metrics_.m);
          metrics_.completion_tokens += static_cast<int64_t>(out.token_ids.size());
        }
        auto answer = pipeline_->finish(std::move(*prepared), std::move(out));
        std::lock_guard<std::mutex> lock(job->m);
        job->answer = std::move(answer);
        job->done = true;
        job->cv.notify_all();
      } catch (...) {
        fail_with(*job, std::current_exception(), /*input=*/false);
      }
      metrics_.finished(std::chrono::duration<double>(Clock::now() - job->arrived).count());
      job_ended();
    };
    return seq;
  }

  // A job's sequence is in the batch as `id`: a stream may start.
  void started(const std::shared_ptr<Job>& job, const std::shared_ptr<PreparedRequest>& prepared, uint64_t id) {
    running_.emplace(id, Running{job, prepared});
    {
      std::lock_guard<std::mutex> lock(job->m);
      job->started = true;
      job->cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(metrics_.m);
    metrics_.prompt_tokens += static_cast<int64_t>(prepared->spliced.ids.front().size());
  }

  void job_ended() {
    std::lock_guard<std::mutex> lock(queue_m_);
    --active_;
    idle_cv_.notify_all();
  }

  std::string metrics_text() {
    int64_t queued = 0, active = 0;
    {
      std::lock_guard<std::mutex> lock(queue_m_);
      queued = static_cast<int64_t>(queue_.size());
      active = active_;
    }
    std::lock_guard<std::mutex> lock(metrics_.m);
    std::string out;
    out += "# HELP lego_http_responses_total Responses to chat requests by HTTP status.\n# TYPE lego_http_responses_total counter\n";
    for (const auto& [status, n] : metrics_.responses) out += "lego_http_responses_total{status=\"" + std::to_string(status) + "\"} " + std::to_string(n) + "\n";
    out += "# HELP lego_queue_depth Chat requests waiting for a row of the batch.\n# TYPE lego_queue_depth gauge\nlego_queue_depth " + std::to_string(queued) + "\n";
    out += "# HELP lego_requests_active Chat requests being prepared or decoded.\n# TYPE lego_requests_active gauge\nlego_requests_active " + std::to_string(active) + "\n";
    out += "# HELP lego_prompt_tokens_total Prompt tokens prefilled.\n# TYPE lego_prompt_tokens_total counter\nlego_prompt_tokens_total " + std::to_string(metrics_.prompt_tokens) + "\n";
    out += "# HELP lego_completion_tokens_total Tokens generated.\n# TYPE lego_completion_tokens_total counter\nlego_completion_tokens_total " + std::to_string(metrics_.completion_tokens) + "\n";
    const double tps = metrics_.decode_seconds > 0 ? static_cast<double>(metrics_.completion_tokens) / metrics_.decode_seconds : 0;
    out += "# HELP lego_decode_tokens_per_second Tokens generated per second of batched decoding, since start.\n# TYPE lego_decode_tokens_per_second gauge\nlego_decode_tokens_per_second " + std::to_string(tps) + "\n";
    out += "# HELP lego_busy_seconds_total Scheduler time by stage: prepare (media encoding, splicing), prefill, decode.\n# TYPE lego_busy_seconds_total counter\n";
    out += "lego_busy_seconds_total{stage=\"prepare\"} " + std::to_string(metrics_.prepare_seconds) + "\n";
    out += "lego_busy_seconds_total{stage=\"prefill\"} " + std::to_string(metrics_.prefill_seconds) + "\n";
    out += "lego_busy_seconds_total{stage=\"decode\"} " + std::to_string(metrics_.decode_seconds) + "\n";
    out += "# HELP lego_request_seconds Time from a chat request's arrival to its answer.\n# TYPE lego_request_seconds histogram\n";
    for (size_t i = 0; i < Metrics::kBuckets.size(); ++i) {
      out += "lego_request_seconds_bucket{le=\"" + json(Metrics::kBuckets[i]).dump() + "\"} " + std::to_string(metrics_.latency[i]) + "\n";
    }
    out += "lego_request_seconds_bucket{le=\"+Inf\"} " + std::to_string(metrics_.latency_count) + "\n";
    out += "lego_request_seconds_sum " + std::to_string(metrics_.latency_sum) + "\nlego_request_seconds_count " + std::to_string(metrics_.latency_count) + "\n";
    return out;
  }

  std::unique_ptr<Pipeline> pipeline_;
  ServeFlags flags_;
  std::filesystem::path folder_;
  api::Limits limits_;
  generate::ContinuousBatcher batcher_;  // the scheduler thread's alone
  std::map<uint64_t, Running> running_;  // by batcher id; the scheduler thread's alone
  int64_t started_ = static_cast<int64_t>(std::time(nullptr));
  std::atomic<uint64_t> jobs_seen_{0};
  std::atomic<bool> draining_{false};

  std::mutex load_m_;  // media decoding on the request threads, at most max_loading_ at once
  std::condition_variable load_cv_;
  int loading_ = 0;
  const int max_loading_ = std::max(1u, std::thread::hardware_concurrency());

  std::mutex queue_m_;
  std::condition_variable queue_cv_, idle_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  int64_t active_ = 0;  // admitted and not yet ended
  bool stopping_ = false;
  Metrics metrics_;
};

}  // namespace

int run_serve(const Args& args) {
  ModelFlags model_flags_;
  ServeFlags f;
  po::options_description d("serve");
  d.add_options()
      ("host", po::value(&f.host)->default_value(f.host), "address to listen on")
      ("port", po::value(&f.port)->default_value(f.port), "port to listen on (0: any free port, printed at start)")
      ("max-batch", po::value(&f.max_batch)->default_value(f.max_batch), "requests decoded together at most")
      ("max-queue", po::value(&f.max_queue)->default_value(f.max_queue), "requests waiting at most; more are answered 503 with Retry-After")
      ("max-upload-mb", po::value(&f.max_upload_mb)->default_value(f.max_upload_mb), "largest total of a request's media, in MiB once decoded (the body may be 4/3 of it, plus 1 MiB)")
      ("max-tokens", po::value(&f.max_tokens)->default_value(f.max_tokens), "default and largest max_tokens of a request")
      ("timeout", po::value(&f.timeout_s)->default_value(f.timeout_s), "seconds a request may take from arrival to its last token")
      ("http-threads", po::value(&f.http_threads)->default_value(f.http_threads), "connections served at once")
      ("api-key", po::value(&f.api_key), "require 'Authorization: Bearer KEY' on /v1/ (default: LEGO_API_KEY, else none)")
      ("model-name", po::value(&f.model_name), "the model's name in replies and /v1/models (default: the model folder's name)");
  d.add(model_flags(model_flags_));
  if (!parse_args(args, d, "lego serve --model DIR [--host 127.0.0.1] [--port 8080] [options]")) return 0;
  auto check = [](bool ok, const std::string& what) {
    if (!ok) throw Error(ErrorKind::InvalidArgument, what);
  };
  check(f.port >= 0 && f.port <= 65535, "--port must be in 0..65535");
  check(f.max_batch >= 1 && f.max_batch <= 256, "--max-batch must be in 1..256");
  check(f.max_queue >= 1 && f.max_queue <= 100000, "--max-queue must be in 1..100000");
  check(f.max_upload_mb >= 1 && f.max_upload_mb <= 1024, "--max-upload-mb must be in 1..1024");
  check(f.max_tokens >= 1 && f.max_tokens <= 1 << 20, "--max-tokens must be in 1..1048576");
  check(f.timeout_s >= 1, "--timeout must be >= 1");
  check(f.http_threads >= 4 && f.http_threads <= 4096, "--http-threads must be in 4..4096");
  if (f.api_key.empty()) {
    if (const char* k = std::getenv("LEGO_API_KEY")) f.api_key = k;
  }
  if (f.model_name.empty()) f.model_name = std::filesystem::weakly_canonical(model_flags_.model_dir).filename().string();

  // Every thread made from here on inherits the blocked signals; the server's signal thread waits for them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // One socket per connection: let as many be open as the hard limit allows.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }

  const auto host = host_for(args);
  auto pipeline = load_pipeline(model_flags_, host);
  // The server's own folder for uploaded media, removed at exit.
  std::string tmpl = (std::filesystem::temp_directory_path() / "lego-serve-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw Error(ErrorKind::Io, "lego serve: cannot make a folder in " + std::filesystem::temp_directory_path().string());
  const std::filesystem::path folder = tmpl;
  try {
    Server(std::move(pipeline), f, folder).run();
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove_all(folder, ec);
    throw;
  }
  std::error_code ec;
  std::filesystem::remove_all(folder, ec);
  return 0;
}

}  // namespace lego::cli
