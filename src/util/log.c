/*
 * log.c: levelled logging to stderr, safe from any thread.
 *
 * Each call formats into a stack buffer and writes it with one fputs, so concurrent lines do not
 * interleave. Over-long messages are cut and end in "...".
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <gptd/util.h>

static atomic_int current_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level) {
    atomic_store(&current_level, (int)level);
}

enum log_level log_get_level(void) {
    return (enum log_level)atomic_load(&current_level);
}

int log_level_parse(const char *name, enum log_level *out) {
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_msg(enum log_level level, const char *fmt, ...) {
    if ((int)level > atomic_load(&current_level)) {
        return;
    }
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) {
        /* Truncated: mark it so a reader knows the line was cut. */
        len = sizeof(line) - 2;
        memcpy(line + len - 3, "...", 3);
    }
    line[len] = '\n';
    line[len + 1] = '\0';
    fputs(line, stderr);
}
