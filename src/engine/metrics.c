/*
 * metrics.c: histogram accumulators for the engine's /metrics figures. The engine thread
 * observes; any thread snapshots. Each field is atomic on its own, so a snapshot taken during an
 * observation may be off by that one observation, which Prometheus tolerates.
 */
#include <gptd/engine.h>

#include "engine_internal.h"

/* Latencies from 1 ms to 60 s, roughly x2.5 apart. */
const double engine_hist_seconds_bounds[ENGINE_HIST_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 1e300,
};

/* Batch rows, powers of two up to 8192. */
const double engine_hist_rows_bounds[ENGINE_HIST_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 1e300,
};

void hist_observe(struct hist_acc *h, const double *bounds, double value) {
    for (int i = 0; i < ENGINE_HIST_BUCKETS; i++) {
        if (value <= bounds[i]) {
            atomic_fetch_add(&h->counts[i], 1);
            break;
        }
    }
    atomic_fetch_add(&h->sum_ns, (uint64_t)(value * 1e9));
    atomic_fetch_add(&h->count, 1);
}

void hist_snapshot(const struct hist_acc *h, struct engine_histogram *out) {
    uint64_t cumulative = 0;
    for (int i = 0; i < ENGINE_HIST_BUCKETS; i++) {
        cumulative += atomic_load(&h->counts[i]);
        out->counts[i] = cumulative;
    }
    out->sum = (double)atomic_load(&h->sum_ns) / 1e9;
    out->count = atomic_load(&h->count);
}
