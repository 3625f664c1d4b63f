/*
 * util.h: small pieces every module shares: levelled logging to stderr, a monotonic clock and
 * the allocator of large arrays.
 *
 * Any thread may call these. Logging writes one line per call with a single fputs, so lines
 * from different threads never interleave mid-line.
 */
#ifndef GPTD_UTIL_H
#define GPTD_UTIL_H

#include <stddef.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
};

/* Messages above this level are dropped. Default LOG_LEVEL_INFO; set once at start-up. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Parses "error", "warn", "info" or "debug". Returns 0 and sets *out, or -1. */
int log_level_parse(const char *name, enum log_level *out);

/* printf-style; prints "<ISO time> <level> <message>\n" to stderr. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Microseconds from CLOCK_MONOTONIC: for durations, never for wall time. */
int64_t time_now_us(void);

/* Seconds since the Unix epoch from CLOCK_REALTIME: for "created" fields and logs. */
int64_t time_wall_s(void);

/* A 64-byte aligned block of at least bytes (freed with free()); from 2 MB on, 2 MB aligned and
 * advised to the kernel as transparent huge pages (src/util/memory.c says why). NULL when out of
 * memory. */
void *mem_alloc_large(size_t bytes);

#endif
