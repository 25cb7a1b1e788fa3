// kvcache::server::Server: the HTTP front of the scheduler — OpenAI-compatible endpoints, slots that keep
// conversations as paged KV sequences (continue, branch, focus, save/restore), metrics and the web UI.
// The endpoints and their semantics are documented in docs/server.md.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

namespace kvcache::server {

struct ServerOptions {
    std::filesystem::path model_path;
    std::string host = "127.0.0.1";
    int port = 8080;                      ///< 0: any free port (see Server::bind)
    std::size_t slots = 4;                ///< conversations kept at once (the least recently used idle one goes first)
    std::size_t ctx = 2048;               ///< positions per slot: prompt + max_tokens must fit
    int threads = 0;                      ///< threads of each forward pass; 0: all cores
    std::string chat_template;            ///< "chatml", "llama3", ...; empty: recognised from the model file
    std::string api_key;                  ///< non-empty: every endpoint but /health and the UI files needs it
    std::filesystem::path slot_save_path; ///< directory of slot cache files; empty: save/restore disabled
    std::size_t prefix_cache_mb = 128;    ///< prefix cache budget (finished conversations' K/V)
    std::string cache_type = "f32";       ///< K/V element type of the pool: f32, f16, bf16, q8_0, q4_0 or q4_0h
    std::string precision = "f32";        ///< matmul arithmetic: f32 or int8 (MatmulPrecision; faster, rounds activations)
    std::size_t max_body_bytes = 1 << 20;
    std::size_t max_batch = 16;           ///< requests decoded together in one step
    std::size_t max_queued = 64;          ///< requests waiting for the batch; more get 503
    std::size_t prefill_chunk = 256;      ///< prompt tokens per step while nothing decodes
    std::size_t prefill_per_decode = 2;   ///< prompt tokens per step per decoding request while any decodes
    std::size_t http_threads = 64;        ///< connections served at once (a stream holds one)
    double slot_wait_seconds = 30;        ///< how long a request waits for a slot when all are busy, then 503
};

class Server {
public:
    /// Loads the model and sets up the pool, prefix cache and scheduler. Throws kvcache::Error (a missing
    /// or bad model file, impossible sizes).
    explicit Server(ServerOptions options);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    /// Binds the listening socket and returns the port (a free one when options.port is 0). Throws
    /// kvcache::IoError if it cannot bind.
    int bind();
    /// Serves until shutdown() (blocking). bind() first.
    void serve();
    /// Ends every stream cleanly (the last event and [DONE] are sent), saves the slots when a slot save
    /// path is set, and makes serve() return. Thread-safe and idempotent.
    void shutdown();

    const std::string& model_name() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace kvcache::server
