/*
 * pool.c: the forward pass's thread pool (see pool.h for the contract and the spin-then-sleep
 * rationale).
 *
 * Protocol: the caller publishes (fn, ctx, n_tasks), resets the task counter and bumps
 * `generation`; each worker that sees a new generation takes tasks from the shared atomic
 * counter until none remain, then decrements `n_busy`. The caller also takes tasks, then waits
 * for n_busy to reach zero. Workers spin on `generation` for a bounded number of polls, then
 * sleep on the condvar; the caller broadcasts only when someone is asleep.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

/* Polls of `generation` before a worker sleeps: long enough to bridge the serial gaps of a
 * decode step (microseconds), short enough that an idle pool sleeps within a millisecond. */
#define POOL_SPIN_POLLS 20000

struct pool {
    int n_threads;
    pid_t pid; /* the process whose workers these are (fork copies only the caller) */
    pthread_t threads[POOL_MAX_THREADS];
    int n_started;

    pthread_mutex_t mutex;
    pthread_cond_t cond;
    atomic_int n_sleeping; /* workers waiting (or about to wait) on cond */
    atomic_uint generation;
    atomic_int is_stopping;

    pool_task_fn fn;
    void *ctx;
    int32_t n_tasks;
    atomic_int next_task;
    atomic_int n_busy;
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

static void run_tasks(struct pool *pool, int i_thread) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (i >= pool->n_tasks) {
            break;
        }
        pool->fn(pool->ctx, i, i_thread);
    }
}

static void *worker_main(void *arg) {
    struct pool *pool = ((struct worker_arg *)arg)->pool;
    int i_thread = ((struct worker_arg *)arg)->i_thread;
    free(arg);
    /* Generation 0 is the pool's birth, not whatever it is by the time this thread runs: a
     * pool_run issued before the thread started must still be seen as new. */
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int polls = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
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
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->is_stopping)) {
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
        run_tasks(pool, i_thread);
        atomic_fetch_sub_explicit(&pool->n_busy, 1, memory_order_release);
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
    /* In a forked child the workers do not exist: run everything on the caller. */
    if (pool->n_threads == 1 || n_tasks == 1 || getpid() != pool->pid) {
        for (int32_t i = 0; i < n_tasks; i++) {
            fn(ctx, i, 0);
        }
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->n_busy, pool->n_threads - 1, memory_order_relaxed);
    /* seq_cst, paired with the worker's n_sleeping increment: one side always sees the other. */
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->cond);
        pthread_mutex_unlock(&pool->mutex);
    }
    run_tasks(pool, 0);
    int polls = 0;
    while (atomic_load_explicit(&pool->n_busy, memory_order_acquire) > 0) {
        cpu_relax();
        if ((++polls & 255) == 0) {
            sched_yield();
        }
    }
}
