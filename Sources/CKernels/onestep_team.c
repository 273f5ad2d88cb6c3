// A small persistent thread team for splitting one layer's work across cores (see include/onestep_kernels.h).
//
// Why not DispatchQueue.concurrentPerform or a thread per layer: a UNet forward runs a few hundred layers of
// 0.1-10 ms; creating threads or going through libdispatch's queues for each costs tens of microseconds and
// wakes threads through the kernel every time. The team's helpers spin briefly on a generation counter after
// each job (the next layer usually follows within microseconds) and then park on a condition variable, so an
// idle server costs no CPU and a busy forward pays no wake-up between layers.
//
// Protocol (Dekker-style, all atomics sequentially consistent):
//   run:    publish job, generation++ ; if sleepers > 0: lock, broadcast, unlock ; do part 0 ; wait pending == 0
//   helper: spin while generation == seen ; else lock, sleepers++, wait while generation == seen, sleepers--
// A helper that increments `sleepers` after run read it then reads the new generation, so no wake-up is lost.
#include "onestep_kernels.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "onestep_isa.h"

/// Spin iterations before a helper parks (about 20-50 microseconds): long enough to bridge the serial work
/// between two layers of one forward, short enough not to burn a shared core between batches.
#define SPIN_ITERATIONS 4000

struct osk_team {
    int32_t threads;
    pthread_t *helpers;            // threads - 1 of them; the caller of osk_team_run is part 0
    _Atomic uint64_t generation;
    _Atomic int32_t pending;       // helpers that have not finished (or acknowledged) the current job
    _Atomic int32_t sleepers;
    _Atomic int32_t stop;
    osk_task fn;                   // the current job, written before generation++ (release by seq_cst)
    void *ctx;
    int32_t parts;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

typedef struct { osk_team *team; int32_t index; } helper_arg;

static inline void cpu_relax(void) {
#if OSK_X86
    _mm_pause();
#endif
}

static void *helper_main(void *p) {
    helper_arg arg = *(helper_arg *)p;
    free(p);
    osk_team *t = arg.team;
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = atomic_load(&t->generation);
        for (int i = 0; g == seen && i < SPIN_ITERATIONS; i++) {
            cpu_relax();
            g = atomic_load(&t->generation);
        }
        if (g == seen) {
            pthread_mutex_lock(&t->mutex);
            atomic_fetch_add(&t->sleepers, 1);
            while ((g = atomic_load(&t->generation)) == seen && !atomic_load(&t->stop))
                pthread_cond_wait(&t->wake, &t->mutex);
            atomic_fetch_sub(&t->sleepers, 1);
            pthread_mutex_unlock(&t->mutex);
        }
        if (atomic_load(&t->stop)) return NULL;
        seen = g;
        // Every helper acknowledges every job, even one with fewer parts than helpers, so none can lag a
        // generation behind and read the next job's fields half written.
        if (arg.index < t->parts) t->fn(t->ctx, arg.index);
        atomic_fetch_sub(&t->pending, 1);
    }
}

osk_team *osk_team_create(int32_t threads) {
    if (threads < 1) threads = 1;
    osk_team *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->threads = threads;
    pthread_mutex_init(&t->mutex, NULL);
    pthread_cond_init(&t->wake, NULL);
    t->helpers = calloc((size_t)threads, sizeof(pthread_t));
    if (!t->helpers) { free(t); return NULL; }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);  // kernels use thread-local heap workspaces, not the stack
    for (int32_t i = 1; i < threads; i++) {
        helper_arg *arg = malloc(sizeof *arg);
        if (!arg) abort();
        arg->team = t;
        arg->index = i;
        if (pthread_create(&t->helpers[i - 1], &attr, helper_main, arg) != 0) abort();
    }
    pthread_attr_destroy(&attr);
    return t;
}

int32_t osk_team_threads(const osk_team *t) { return t->threads; }

void osk_team_run(osk_team *t, int32_t parts, osk_task fn, void *ctx) {
    if (parts > t->threads) parts = t->threads;
    if (parts <= 1) {
        if (parts == 1) fn(ctx, 0);
        return;
    }
    t->fn = fn;
    t->ctx = ctx;
    t->parts = parts;
    atomic_store(&t->pending, t->threads - 1);
    atomic_fetch_add(&t->generation, 1);
    if (atomic_load(&t->sleepers) > 0) {
        pthread_mutex_lock(&t->mutex);
        pthread_cond_broadcast(&t->wake);
        pthread_mutex_unlock(&t->mutex);
    }
    fn(ctx, 0);
    // The caller waits for its helpers; it yields after a while, since on a shared machine a helper may be
    // waiting for this very core.
    for (int i = 0; atomic_load(&t->pending) > 0; i++) {
        if (i < SPIN_ITERATIONS) cpu_relax();
        else sched_yield();
    }
}

void osk_team_destroy(osk_team *t) {
    if (!t) return;
    pthread_mutex_lock(&t->mutex);
    atomic_store(&t->stop, 1);
    atomic_fetch_add(&t->generation, 1);
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->mutex);
    for (int32_t i = 1; i < t->threads; i++) pthread_join(t->helpers[i - 1], NULL);
    pthread_mutex_destroy(&t->mutex);
    pthread_cond_destroy(&t->wake);
    free(t->helpers);
    free(t);
}
