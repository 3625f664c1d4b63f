/*
 * fuzz.h: what every gptd fuzz harness defines. Each harness is one file with
 * LLVMFuzzerTestOneInput (and optionally LLVMFuzzerInitialize); it links either with libFuzzer
 * (clang -fsanitize=fuzzer, for fuzzing) or with replay_main.c (any compiler, for replaying the
 * committed corpus and every past crasher as a unit test in CI).
 */
#ifndef GPTD_FUZZ_H
#define GPTD_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Aborts (so both libFuzzer and the replay test report it) when cond is false. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fuzz_fail(__FILE__, __LINE__, #cond);                                                  \
        }                                                                                          \
    } while (0)

_Noreturn void fuzz_fail(const char *file, int line, const char *what);

/* Writes data to a fresh file in a per-process temporary directory and returns its path
 * (valid until the next call). For loaders that take a path. */
const char *fuzz_write_temp(const char *name, const uint8_t *data, size_t size);
/* The per-process temporary directory (created on first use, removed at exit). */
const char *fuzz_temp_dir(void);
/* The tiny GPT-2 of tests/data ($GPTD_TESTDATA_DIR/gpt2-tiny-random; meson compiles in the
 * source tree's tests/data as the default), for harnesses that need the real vocabulary. */
const char *fuzz_tiny_model_dir(void);

#endif
