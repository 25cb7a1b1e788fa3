// kvcache-server: an OpenAI-compatible chat server whose conversations are KV-cache slots, with a web UI.
//
//   kvcache-server --port 8080 --slots 4 --ctx 2048         (then open http://127.0.0.1:8080/)
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <pthread.h>
#include <sys/types.h>
#include <unistd.h>
#include <thread>

#include "kvcache/error.hpp"
#include "kvcache/model/load_model.hpp"
#include "server.hpp"

#ifndef KVCACHE_SOURCE_DIR
#define KVCACHE_SOURCE_DIR "."
#endif

int main(int argc, char** argv) {
    CLI::App app{"kvcache-server: OpenAI-compatible chat server whose conversations are KV-cache slots you can branch"};
    kvcache::server::ServerOptions o;
    std::string model = kvcache::default_model_path(KVCACHE_SOURCE_DIR).string();
    std::string save_path;
    app.add_option("-m,--model", model, "GGUF model file (default: $KVCACHE_MODEL or models/ in the source tree)");
    app.add_option("--host", o.host, "Address to listen on (127.0.0.1: this machine only)");
    app.add_option("--port", o.port, "Port (0: any free port, printed at start)")->check(CLI::Range(0, 65535));
    app.add_option("--slots", o.slots, "Conversations kept at once")->check(CLI::Range(1, 4096));
    app.add_option("--ctx", o.ctx, "Positions per slot (prompt + max_tokens)")->check(CLI::Range(8, 1 << 20));
    app.add_option("--threads", o.threads, "Threads of each forward pass (0: all cores)")->check(CLI::Range(0, 1024));
    app.add_option("--precision", o.precision, "Matmul arithmetic: f32, or int8 (activations rounded to int8; faster)");
    app.add_option("--chat-template", o.chat_template,
                   "chatml, llama3, llama2, zephyr or phi3 (default: recognised from the model's template)");
    app.add_option("--api-key", o.api_key, "Require 'Authorization: Bearer <key>' on every endpoint but /health and the UI");
    app.add_option("--slot-save-path", save_path, "Directory for slot cache files (save/restore; saved at shutdown)");
    app.add_option("--prefix-cache-mb", o.prefix_cache_mb, "Prefix cache budget in MiB")->check(CLI::Range(0, 1 << 20));
    app.add_option("--cache-type", o.cache_type, "K/V element type of the pool: f32, f16, bf16, q8_0, q4_0, q4_0h")
        ->check(CLI::IsMember({"f32", "fp32", "f16", "fp16", "bf16", "q8_0", "q4_0", "q4_0h"}));
    app.add_option("--max-body-bytes", o.max_body_bytes, "Largest request body")->check(CLI::Range(1024, 1 << 30));
    app.add_option("--batch", o.max_batch, "Requests decoded together in one step")->check(CLI::Range(1, 1024));
    app.add_option("--max-queued", o.max_queued, "Requests waiting for the batch before 503")->check(CLI::Range(1, 1 << 20));
    app.add_option("--prefill-chunk", o.prefill_chunk, "Prompt tokens per step while nothing decodes")
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--prefill-per-decode", o.prefill_per_decode,
                   "Prompt tokens per step per decoding request while any decodes (bounds how much a long prompt "
                   "slows running streams)")
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--http-threads", o.http_threads, "Connections served at once")->check(CLI::Range(4, 4096));
    CLI11_PARSE(app, argc, argv);
    o.model_path = model;
    o.slot_save_path = save_path;

    // SIGINT/SIGTERM are taken by one thread (sigwait) so the others never run a handler; a write to a
    // closed connection must fail with EPIPE, not kill the server.
    std::signal(SIGPIPE, SIG_IGN);
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    try {
        if (!std::filesystem::exists(o.model_path)) {
            fmt::print(stderr, "error: model file not found: {}\nFetch it with: bash scripts/fetch-model.sh (or pass --model)\n",
                       o.model_path.string());
            return 1;
        }
        kvcache::server::Server server(o);
        const int port = server.bind();
        std::atomic<bool> signalled{false};
        std::thread signals([&] {
            int sig = 0;
            sigwait(&stop_signals, &sig);
            signalled = true;
            fmt::print(stderr, "kvcache-server: signal {}, shutting down\n", sig);
            server.shutdown();
        });
        fmt::print("kvcache-server: model {} on http://{}:{}/ ({} slots x {} positions)\n", server.model_name(), o.host, port,
                   o.slots, o.ctx);
        std::fflush(stdout);
        server.serve();
        // serve() returns after shutdown() — or if listening failed, with the signal thread still waiting:
        // then a signal to the process wakes it (shutdown() is idempotent).
        if (!signalled) kill(getpid(), SIGTERM);
        signals.join();
        return 0;
    } catch (const kvcache::Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {  // not expected: the library throws kvcache::Error only
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
