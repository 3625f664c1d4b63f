/*
 * pool.h: a small fixed thread pool for the forward pass, private to src/model.
 *
 * The engine thread (the caller of model_forward) runs pool_run; the pool's n_threads - 1
 * workers and the caller share the tasks, and pool_run returns when all are done. Workers spin
 * briefly between calls (a decode step runs ~100 parallel regions back to back, and a condvar
 * wake-up per region would cost more than the work) and then sleep on a condvar, so an idle
 * server does not burn the cores. The pool is the only set of compute threads the model uses:
 * the weight matmuls are our own kernels (see kernels.h), so no OpenBLAS threads spin beside it.
 */
#ifndef GPTD_MODEL_POOL_H
#define GPTD_MODEL_POOL_H

#include <stdint.h>

#define POOL_MAX_THREADS 64

/* Runs task i_task on thread i_thread (0 .. n_threads-1; 0 is the caller). */
typedef void (*pool_task_fn)(void *ctx, int32_t i_task, int32_t i_thread);

struct pool;

/* n_threads >= 1 (clamped to POOL_MAX_THREADS). Returns NULL when threads cannot start. */
struct pool *pool_create(int n_threads);
/* Stops and joins the workers. NULL is a no-op. Not while pool_run is running. */
void pool_destroy(struct pool *pool);
int pool_n_threads(const struct pool *pool);
/* Runs fn for every i_task in [0, n_tasks) and returns when all have finished. One caller at a
 * time. Tasks are handed out dynamically, so a task's result must not depend on its thread. */
void pool_run(struct pool *pool, pool_task_fn fn, void *ctx, int32_t n_tasks);

#endif
