/*
 * pool.c: the forward pass's thread pool (see pool.h for the contract and the spin-then-sleep
 * rationale).
 *
 * Protocol. One 64-bit atomic word holds (generation : 24 | n_tasks : 20 | next task : 20).
 * pool_run stores fn/ctx, zeroes n_done, then publishes a new word (release). Anyone claims a
 * task with a compare-and-swap that bumps `next` only while the word still carries the same
 * generation and next < n_tasks; a successful claim proves the run is still in flight (its task
 * is not done), so fn/ctx read after it are that run's. The caller claims tasks too and returns
 * once n_done == n_tasks. The caller never waits for a worker that has not started: on a busy
 * machine a descheduled worker just finds nothing left when it wakes, instead of stalling every
 * parallel region of a decode step behind the scheduler. Workers spin on the word for a
 * bounded number of polls, then sleep on the condvar; the caller broadcasts only when someone
 * sleeps (n_sleeping and the word are both seq_cst, so one side always sees the other).
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

/* Polls of the word before a worker sleeps: long enough to bridge the serial gaps of a decode
 * step (microseconds), short enough that an idle pool sleeps within a millisecond. */
#define POOL_SPIN_POLLS 20000

#define WORD_GEN_SHIFT   40
#define WORD_TASKS_SHIFT 20
#define WORD_FIELD_MASK  ((1ull << 20) - 1)
#define POOL_MAX_TASKS   ((int32_t)WORD_FIELD_MASK)

struct pool {
    int n_threads;
    pid_t pid; /* the process whose workers these are (fork copies only the caller) */
    pthread_t threads[POOL_MAX_THREADS];
    int n_started;

    pthread_mutex_t mutex;
    pthread_cond_t cond;
    atomic_int n_sleeping; /* workers waiting (or about to wait) on cond */
    atomic_int is_stopping;

    _Atomic uint64_t word; /* generation | n_tasks | next */
    atomic_int n_done;
    pool_task_fn fn;
    void *ctx;
};

struct worker_arg {
    struct pool *pool;
    int i_thread;
};

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#endif
}

static uint64_t word_gen(uint64_t w) {
    return w >> WORD_GEN_SHIFT;
}

/* Claims and runs tasks of the generation `gen` until none are left. */
static void run_tasks(struct pool *pool, uint64_t gen, int i_thread) {
    uint64_t w = atomic_load_explicit(&pool->word, memory_order_acquire);
    for (;;) {
        uint64_t n_tasks = (w >> WORD_TASKS_SHIFT) & WORD_FIELD_MASK;
        uint64_t next = w & WORD_FIELD_MASK;
        if (word_gen(w) != gen || next >= n_tasks) {
            return;
        }
        if (!atomic_compare_exchange_weak_explicit(&pool->word, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire)) {
            continue; /* w now holds the current word */
        }
        pool->fn(pool->ctx, (int32_t)next, i_thread);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
        w = atomic_load_explicit(&pool->word, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    struct pool *pool = ((struct worker_arg *)arg)->pool;
    int i_thread = ((struct worker_arg *)arg)->i_thread;
    free(arg);
    /* Generation 0 is the pool's birth, not whatever it is by the time this thread runs: a run
     * published before the thread started must still be seen as new. */
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen;
        int polls = 0;
        while ((gen = word_gen(atomic_load(&pool->word))) == seen &&
               !atomic_load(&pool->is_stopping)) {
            if (++polls < POOL_SPIN_POLLS) {
                cpu_relax();
                if ((polls & 255) == 0) {
                    sched_yield(); /* lets a co-scheduled thread (or valgrind) make progress */
                }
                continue;
            }
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (word_gen(atomic_load(&pool->word)) == seen && !atomic_load(&pool->is_stopping)) {
                pthread_cond_wait(&pool->cond, &pool->mutex);
            }
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mutex);
            polls = 0;
        }
        if (atomic_load(&pool->is_stopping)) {
            break;
        }
        seen = gen;
        run_tasks(pool, gen, i_thread);
    }
    return NULL;
}

struct pool *pool_create(int n_threads) {
    if (n_threads < 1) {
        n_threads = 1;
    }
    if (n_threads > POOL_MAX_THREADS) {
        n_threads = POOL_MAX_THREADS;
    }
    struct pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL) {
        return NULL;
    }
    pool->n_threads = n_threads;
    pool->pid = getpid();
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->cond, NULL);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *arg = malloc(sizeof(*arg));
        if (arg == NULL) {
            goto fail;
        }
        arg->pool = pool;
        arg->i_thread = i;
        if (pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            goto fail;
        }
        pool->n_started = i;
    }
    return pool;
fail:
    pool_destroy(pool);
    return NULL;
}

void pool_destroy(struct pool *pool) {
    if (pool == NULL) {
        return;
    }
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->is_stopping, 1);
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i <= pool->n_started; i++) {
        pthread_join(pool->threads[i], NULL);
    }
    pthread_cond_destroy(&pool->cond);
    pthread_mutex_destroy(&pool->mutex);
    free(pool);
}

int pool_n_threads(const struct pool *pool) {
    return pool->n_threads;
}

void pool_run(struct pool *pool, pool_task_fn fn, void *ctx, int32_t n_tasks) {
    if (n_tasks <= 0) {
        return;
    }
    /* One thread, one task, more tasks than the word holds (never in practice), or a forked
     * child whose workers do not exist: run everything on the caller. */
    if (pool->n_threads == 1 || n_tasks == 1 || n_tasks > POOL_MAX_TASKS || getpid() != pool->pid) {
        for (int32_t i = 0; i < n_tasks; i++) {
            fn(ctx, i, 0);
        }
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    uint64_t gen = (word_gen(atomic_load_explicit(&pool->word, memory_order_relaxed)) + 1) &
                   ((1ull << 24) - 1);
    if (gen == 0) {
        gen = 1; /* 0 is the birth generation workers start from */
    }
    /* seq_cst store, paired with the worker's n_sleeping increment. */
    atomic_store(&pool->word, (gen << WORD_GEN_SHIFT) | ((uint64_t)n_tasks << WORD_TASKS_SHIFT));
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->cond);
        pthread_mutex_unlock(&pool->mutex);
    }
    run_tasks(pool, gen, 0);
    int polls = 0;
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) < n_tasks) {
        cpu_relax();
        if ((++polls & 255) == 0) {
            sched_yield();
        }
    }
}
