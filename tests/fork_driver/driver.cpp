// A small tool over the llama.cpp API of T-MAC's fork (Oct 2024: llama_load_model_from_file,
// llama_new_context_with_model, llama_batch, llama_decode, llama_get_logits_ith).
//
//   driver logits   MODEL OUT.f32 THREADS TOKEN...   every position's logits, float32 [T][n_vocab]
//   driver bench    MODEL THREADS N_GEN              decode N_GEN tokens one by one; prints JSON
//   driver quantize IN.gguf OUT.gguf FTYPE THREADS   llama_model_quantize (FTYPE: llama_ftype number)
//
// Exit status 0 on success; any failure prints a line on stderr and exits non-zero.
#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN || std::getenv("FORK_DRIVER_VERBOSE")) fputs(text, stderr);
}

static int fail(const char * what) {
    fprintf(stderr, "driver: %s\n", what);
    return 2;
}

struct Session {
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    ~Session() {
        if (ctx) llama_free(ctx);
        if (model) llama_free_model(model);
    }
};

static bool open_session(Session & s, const char * path, int threads, int n_ctx, int n_batch) {
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    s.model = llama_load_model_from_file(path, mp);
    if (!s.model) return false;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_ubatch = n_batch;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = true;
    s.ctx = llama_new_context_with_model(s.model, cp);
    return s.ctx != nullptr;
}

static int cmd_logits(int argc, char ** argv) {
    if (argc < 6) return fail("usage: logits MODEL OUT THREADS TOKEN...");
    const int threads = std::atoi(argv[4]);
    std::vector<llama_token> toks;
    for (int i = 5; i < argc; ++i) toks.push_back(std::atoi(argv[i]));
    const int n = (int)toks.size();
    Session s;
    if (!open_session(s, argv[2], threads, n < 64 ? 64 : n, n)) return fail("cannot load the model or make a context");
    const int n_vocab = llama_n_vocab(s.model);
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = toks[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    const int rc = llama_decode(s.ctx, batch);
    llama_batch_free(batch);
    if (rc != 0) return fail("llama_decode failed");
    FILE * f = std::fopen(argv[3], "wb");
    if (!f) return fail("cannot open the output file");
    for (int i = 0; i < n; ++i) {
        const float * row = llama_get_logits_ith(s.ctx, i);
        if (!row || std::fwrite(row, sizeof(float), n_vocab, f) != (size_t)n_vocab) {
            std::fclose(f);
            return fail("cannot read or write logits");
        }
    }
    if (std::fclose(f) != 0) return fail("cannot write the output file");
    printf("{\"n_tokens\": %d, \"n_vocab\": %d}\n", n, n_vocab);
    return 0;
}

static int cmd_bench(int argc, char ** argv) {
    if (argc != 5) return fail("usage: bench MODEL THREADS N_GEN");
    const int threads = std::atoi(argv[3]);
    const int n_gen = std::atoi(argv[4]);
    Session s;
    if (!open_session(s, argv[2], threads, n_gen + 8, 1)) return fail("cannot load the model or make a context");
    const int n_vocab = llama_n_vocab(s.model);
    llama_batch batch = llama_batch_init(1, 0, 1);
    auto step = [&](int pos) {
        batch.token[0] = (llama_token)(1 + (pos * 7) % (n_vocab - 1));
        batch.pos[0] = pos;
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = 0;
        batch.logits[0] = 1;
        batch.n_tokens = 1;
        return llama_decode(s.ctx, batch);
    };
    // two warm-up tokens (page in the weights, allocate the graph), then the timed decode
    if (step(0) != 0 || step(1) != 0) return fail("llama_decode failed");
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n_gen; ++i)
        if (step(2 + i) != 0) return fail("llama_decode failed");
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    llama_batch_free(batch);
    printf("{\"tokens\": %d, \"seconds\": %.6f, \"tok_per_s\": %.4f}\n", n_gen, sec, n_gen / sec);
    return 0;
}

static int cmd_quantize(int argc, char ** argv) {
    if (argc != 6) return fail("usage: quantize IN OUT FTYPE THREADS");
    llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = (enum llama_ftype)std::atoi(argv[4]);
    qp.nthread = std::atoi(argv[5]);
    qp.pure = true;  // every 2-D weight of the requested type (no K-quant mixture), embeddings included
    if (llama_model_quantize(argv[2], argv[3], &qp) != 0) return fail("llama_model_quantize failed");
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 2) return fail("usage: driver logits|bench|quantize ...");
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    int rc;
    if (!std::strcmp(argv[1], "logits")) rc = cmd_logits(argc, argv);
    else if (!std::strcmp(argv[1], "bench")) rc = cmd_bench(argc, argv);
    else if (!std::strcmp(argv[1], "quantize")) rc = cmd_quantize(argc, argv);
    else rc = fail("unknown command");
    llama_backend_free();
    return rc;
}
