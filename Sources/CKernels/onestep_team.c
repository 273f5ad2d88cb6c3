// A small persistent thread team for splitting one layer's work across cores (see include/onestep_kernels.h).
//
// Why not DispatchQueue.concurrentPerform or a thread per layer: a UNet forward runs a few hundred layers of
// 0.1-10 ms; creating threads or going through libdispatch's queues for each costs tens of microseconds and
// wakes threads through the kernel every time. The team's helpers spin briefly after each job (the next layer
// usually follows within microseconds) and then park on a condition variable, so an idle server costs no CPU
// and a busy forward pays no wake-up between layers.
//
// Chunks are claimed, not assigned: a job is cut into more chunks than threads and every thread (the caller
// too) claims the next chunk until none is left, so a helper the OS has descheduled (a shared machine) delays
// nothing: the caller runs the chunks it would have run. A chunk's result depends only on its index, never on
// which thread ran it, so the output bytes are the same on any team size.
//
// The ticket packs (job id, chunks, next index) in one atomic word; a thread claims index i of job j by a CAS
// from (j, n, i) to (j, n, i + 1) with i < n. A successful claim means job j is not finished (its chunk i has
// not run), so the job's fn and ctx, read after the claim, are still job j's. Helpers that wake late see a
// newer job id, or no index left, and claim nothing.
#include "onestep_kernels.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "onestep_isa.h"

/// Spin iterations before a helper parks (tens of microseconds): long enough to bridge the serial work between
/// two layers of one forward, short enough not to burn a shared core between batches.
#define SPIN_ITERATIONS 4000

#define ID_SHIFT 40
#define COUNT_SHIFT 20
#define FIELD_MASK ((1ull << COUNT_SHIFT) - 1)

struct osk_team {
    int32_t threads;
    pthread_t *helpers;            // threads - 1 of them; the caller of osk_team_run is worker 0
    _Atomic uint64_t generation;   // job id of the latest job (low 24 bits go into the ticket)
    _Atomic uint64_t ticket;       // (job id << 40) | (chunks << 20) | next index
    _Atomic int32_t done;          // chunks of the current job finished
    _Atomic int32_t sleepers;
    _Atomic int32_t stop;
    osk_task fn;                   // the current job, written before the ticket and generation (seq_cst)
    void *ctx;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

typedef struct { osk_team *team; int32_t index; } helper_arg;

static inline void cpu_relax(void) {
#if OSK_X86
    _mm_pause();
#endif
}

/// Claims and runs chunks of job `id` until none is left.
static void work(osk_team *t, uint64_t id, int32_t worker) {
    id &= (1ull << (64 - ID_SHIFT)) - 1;
    for (;;) {
        uint64_t tk = atomic_load(&t->ticket);
        uint64_t chunks = (tk >> COUNT_SHIFT) & FIELD_MASK, next = tk & FIELD_MASK;
        if ((tk >> ID_SHIFT) != id || next >= chunks) return;
        if (!atomic_compare_exchange_weak(&t->ticket, &tk, tk + 1)) continue;
        t->fn(t->ctx, (int32_t)next, worker);
        atomic_fetch_add(&t->done, 1);
    }
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
        work(t, g, arg.index);
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

void osk_team_run(osk_team *t, int32_t chunks, osk_task fn, void *ctx) {
    if (chunks <= 0) return;
    if (chunks > (int32_t)FIELD_MASK) abort();
    if (t->threads == 1 || chunks == 1) {
        for (int32_t c = 0; c < chunks; c++) fn(ctx, c, 0);
        return;
    }
    uint64_t id = (atomic_load(&t->generation) + 1) & ((1ull << (64 - ID_SHIFT)) - 1);
    if (id == 0) id = 1;  // 0 is the helpers' initial "seen"
    t->fn = fn;
    t->ctx = ctx;
    atomic_store(&t->done, 0);
    atomic_store(&t->ticket, (id << ID_SHIFT) | ((uint64_t)chunks << COUNT_SHIFT));
    atomic_store(&t->generation, id);
    if (atomic_load(&t->sleepers) > 0) {
        pthread_mutex_lock(&t->mutex);
        pthread_cond_broadcast(&t->wake);
        pthread_mutex_unlock(&t->mutex);
    }
    work(t, id, 0);
    // Chunks claimed by helpers may still run; yield after a while, since on a shared machine a helper may
    // be waiting for this very core.
    for (int i = 0; atomic_load(&t->done) < chunks; i++) {
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
