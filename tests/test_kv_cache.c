/*
 * test_kv_cache.c: the paged KV cache: block accounting, all-or-nothing reservation, context
 * limits, fork with reference counts, copy-on-write of a shared block, truncation, return of
 * every block to the pool, and the prefix cache (whole-block matching, LRU eviction that never
 * touches blocks in use, keys dropped before a block is rewritten). Uses the tiny golden model
 * only for its shape.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include <gptd/model.h>
#include <gptd/util.h>

#include "../src/model/kv_cache_internal.h"
#include "common.h"

static struct model *g_model;
static struct kv_cache *g_kv;
static size_t g_block_bytes;

static void setup(void) {
    g_model = load_tiny_model(NULL);
    char err[512] = "";
    /* 4 layers x 2 x 16 positions x 64 floats x 4 bytes = 32 KiB per block; 10 blocks. */
    g_block_bytes = 4 * 2 * KV_BLOCK_SIZE * 64 * sizeof(float);
    g_kv = kv_cache_create(g_model, 10 * g_block_bytes + 100, err, sizeof(err));
    ck_assert_msg(g_kv != NULL, "%s", err);
}

static void teardown(void) {
    kv_cache_destroy(g_kv);
    model_destroy(g_model);
}

START_TEST(test_pool_size_follows_budget) {
    ck_assert_uint_eq(kv_cache_bytes_per_block(g_kv), g_block_bytes);
    ck_assert_int_eq(kv_cache_n_blocks_total(g_kv), 10);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
    char err[256] = "";
    ck_assert_ptr_null(kv_cache_create(g_model, g_block_bytes - 1, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "less than one block"));
}
END_TEST

START_TEST(test_reserve_takes_whole_blocks_and_finish_returns_them) {
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, g_kv), 0);
    ck_assert_int_eq(seq.max_blocks, 512 / KV_BLOCK_SIZE);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &seq, 17), KV_OK);
    ck_assert_int_eq(seq.n_blocks, 2);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 8);
    seq.n_pos = 17; /* as model_forward would leave it */
    ck_assert_int_eq(kv_seq_reserve(g_kv, &seq, 15), KV_OK);
    ck_assert_int_eq(seq.n_blocks, 2); /* positions 17..31 fit in block 1 */
    ck_assert_int_eq(kv_seq_reserve(g_kv, &seq, 16), KV_OK);
    ck_assert_int_eq(seq.n_blocks, 3);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &seq, 0), KV_OK);
    kv_seq_finish(g_kv, &seq);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
    ck_assert_ptr_null(seq.blocks);
    kv_seq_finish(g_kv, &seq); /* a zeroed struct is fine */
}
END_TEST

START_TEST(test_reserve_is_all_or_nothing_when_out_of_blocks) {
    struct kv_seq a, b;
    ck_assert_int_eq(kv_seq_init(&a, g_kv), 0);
    ck_assert_int_eq(kv_seq_init(&b, g_kv), 0);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &a, 8 * KV_BLOCK_SIZE), KV_OK);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &b, 3 * KV_BLOCK_SIZE), KV_ERR_NO_BLOCKS);
    ck_assert_int_eq(b.n_blocks, 0);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 2);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &b, 2 * KV_BLOCK_SIZE), KV_OK);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 0);
    kv_seq_finish(g_kv, &a);
    kv_seq_finish(g_kv, &b);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
}
END_TEST

START_TEST(test_reserve_refuses_past_the_context) {
    char err[256];
    struct kv_cache *big = kv_cache_create(g_model, 40 * g_block_bytes, err, sizeof(err));
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, big), 0);
    ck_assert_int_eq(kv_seq_reserve(big, &seq, 513), KV_ERR_TOO_LONG);
    ck_assert_int_eq(kv_seq_reserve(big, &seq, 512), KV_OK);
    seq.n_pos = 512;
    ck_assert_int_eq(kv_seq_reserve(big, &seq, 1), KV_ERR_TOO_LONG);
    kv_seq_finish(big, &seq);
    kv_cache_destroy(big);
}
END_TEST

START_TEST(test_fork_shares_blocks_and_copies_on_write) {
    struct kv_seq src, dst;
    ck_assert_int_eq(kv_seq_init(&src, g_kv), 0);
    ck_assert_int_eq(kv_seq_init(&dst, g_kv), 0);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &src, 20), KV_OK);
    src.n_pos = 20;
    /* Mark the partial block so the copy can be recognised. */
    float *row = kv_cache_row(g_kv, &src, 3, 1, 19);
    row[5] = 42.0f;
    kv_seq_fork(g_kv, &dst, &src);
    ck_assert_int_eq(dst.n_pos, 20);
    ck_assert_int_eq(dst.n_blocks, 2);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 8); /* shared, not copied */
    ck_assert_int_eq(g_kv->refcount[src.blocks[1]], 2);
    /* dst writes position 20, inside the shared block 1: it gets its own copy. */
    ck_assert_int_eq(kv_seq_reserve(g_kv, &dst, 1), KV_OK);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 7);
    ck_assert_int_eq(dst.blocks[0], src.blocks[0]);
    ck_assert_int_ne(dst.blocks[1], src.blocks[1]);
    ck_assert_int_eq(g_kv->refcount[src.blocks[1]], 1);
    ck_assert_float_eq(kv_cache_row(g_kv, &dst, 3, 1, 19)[5], 42.0f);
    kv_cache_row(g_kv, &dst, 3, 1, 19)[5] = 7.0f;
    ck_assert_float_eq(row[5], 42.0f);
    /* src is now the only holder of its block 1: no copy needed. */
    ck_assert_int_eq(kv_seq_reserve(g_kv, &src, 1), KV_OK);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 7);
    kv_seq_finish(g_kv, &src);
    ck_assert_int_eq(g_kv->refcount[dst.blocks[0]], 1);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 8);
    kv_seq_finish(g_kv, &dst);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
}
END_TEST

/* An f16 cache: half the bytes per block, twice the blocks for a budget, and copy-on-write
 * copies the whole (16-bit) block, last element included. */
START_TEST(test_f16_cache_halves_blocks_and_copies_them_whole) {
    char err[256] = "";
    struct kv_cache *kv =
        kv_cache_create_with(g_model, 10 * g_block_bytes + 100, KV_DTYPE_F16, err, sizeof(err));
    ck_assert_msg(kv != NULL, "%s", err);
    ck_assert_int_eq(kv_cache_dtype(kv), KV_DTYPE_F16);
    ck_assert_uint_eq(kv_cache_bytes_per_block(kv) * 2, g_block_bytes);
    ck_assert_int_eq(kv_cache_n_blocks_total(kv), 20);
    struct kv_seq src, dst;
    ck_assert_int_eq(kv_seq_init(&src, kv), 0);
    ck_assert_int_eq(kv_seq_init(&dst, kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &src, 20), KV_OK);
    src.n_pos = 20;
    uint16_t *data = kv->data;
    /* The last element of src's block 1: V of the last layer, position 31, last column. */
    size_t last = kv_cache_row_index(kv, &src, 3, 1, 31) + 63;
    ck_assert_uint_eq(last + 1, ((size_t)src.blocks[1] + 1) * kv->block_elems);
    data[last] = 0x3c00; /* 1.0 */
    kv_seq_fork(kv, &dst, &src);
    ck_assert_int_eq(kv_seq_reserve(kv, &dst, 1), KV_OK);
    ck_assert_int_ne(dst.blocks[1], src.blocks[1]);
    ck_assert_uint_eq(data[kv_cache_row_index(kv, &dst, 3, 1, 31) + 63], 0x3c00);
    kv_seq_finish(kv, &src);
    kv_seq_finish(kv, &dst);
    ck_assert_int_eq(kv_cache_n_blocks_free(kv), 20);
    kv_cache_destroy(kv);
}
END_TEST

START_TEST(test_copy_on_write_counts_toward_the_reservation) {
    struct kv_seq src, dst;
    ck_assert_int_eq(kv_seq_init(&src, g_kv), 0);
    ck_assert_int_eq(kv_seq_init(&dst, g_kv), 0);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &src, 9 * KV_BLOCK_SIZE + 1), KV_OK);
    src.n_pos = 9 * KV_BLOCK_SIZE + 1;
    kv_seq_fork(g_kv, &dst, &src);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 0);
    /* Writing into the shared tenth block needs a free block for the copy: none left. */
    ck_assert_int_eq(kv_seq_reserve(g_kv, &dst, 1), KV_ERR_NO_BLOCKS);
    ck_assert_int_eq(dst.blocks[9], src.blocks[9]);
    kv_seq_finish(g_kv, &src);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &dst, 1), KV_OK); /* sole holder now */
    kv_seq_finish(g_kv, &dst);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
}
END_TEST

START_TEST(test_truncate_frees_blocks_past_the_end) {
    struct kv_seq seq;
    ck_assert_int_eq(kv_seq_init(&seq, g_kv), 0);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &seq, 50), KV_OK);
    seq.n_pos = 50;
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 6);
    kv_seq_truncate(g_kv, &seq, 17);
    ck_assert_int_eq(seq.n_pos, 17);
    ck_assert_int_eq(seq.n_blocks, 2);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 8);
    kv_seq_truncate(g_kv, &seq, 30); /* never grows */
    ck_assert_int_eq(seq.n_pos, 17);
    kv_seq_truncate(g_kv, &seq, 0);
    ck_assert_int_eq(seq.n_blocks, 0);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
    kv_seq_finish(g_kv, &seq);
}
END_TEST

/* ---- prefix cache ---- */

/* A sequence that "computed" n tokens: reserved, positions written, full blocks committed. */
static void compute(struct kv_seq *seq, const int32_t *tokens, int32_t n) {
    ck_assert_int_eq(kv_seq_reserve(g_kv, seq, n - seq->n_pos), KV_OK);
    seq->n_pos = n;
    kv_seq_commit_prefix(g_kv, seq, tokens);
}

static void fill(int32_t *t, int32_t n, int32_t first) {
    for (int32_t i = 0; i < n; i++) {
        t[i] = first + i;
    }
}

START_TEST(test_prefix_cache_matches_whole_blocks_of_an_equal_prefix) {
    int32_t a[64], b[64];
    fill(a, 64, 100);
    memcpy(b, a, sizeof(a));
    b[40] = 9; /* differs in the third block */
    struct kv_seq s1, s2, s3;
    kv_seq_init(&s1, g_kv);
    kv_seq_init(&s2, g_kv);
    kv_seq_init(&s3, g_kv);
    compute(&s1, a, 50); /* blocks 0..2 full, block 3 partial */
    ck_assert_int_eq(s1.n_keyed, 3);
    ck_assert_int_eq(kv_cache_n_blocks_cached(g_kv), 3);
    /* While s1 runs: b shares its first two blocks (by reference), not the third. */
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &s2, b, 63), 32);
    ck_assert_int_eq(s2.blocks[0], s1.blocks[0]);
    ck_assert_int_eq(s2.blocks[1], s1.blocks[1]);
    ck_assert_int_eq(g_kv->refcount[s1.blocks[0]], 2);
    /* Never the partial block, and never past n_tokens: 47 tokens hold 2 whole blocks. */
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &s3, a, 47), 32);
    kv_seq_finish(g_kv, &s3);
    kv_seq_init(&s3, g_kv);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &s3, a, 63), 48);
    kv_seq_finish(g_kv, &s3);
    /* After s1 and s2 end, the keyed blocks stay cached and count as free. */
    kv_seq_finish(g_kv, &s1);
    kv_seq_finish(g_kv, &s2);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
    ck_assert_int_eq(kv_cache_n_blocks_evictable(g_kv), 3);
    kv_seq_init(&s1, g_kv);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &s1, a, 64), 48);
    ck_assert_int_eq(kv_cache_n_blocks_evictable(g_kv), 0);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 7);
    kv_seq_finish(g_kv, &s1);
    /* Another text: nothing. */
    int32_t c[64];
    fill(c, 64, 5000);
    kv_seq_init(&s1, g_kv);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &s1, c, 64), 0);
    ck_assert_int_eq(s1.n_blocks, 0);
    kv_seq_finish(g_kv, &s1);
}
END_TEST

START_TEST(test_prefix_cache_evicts_least_recent_and_never_blocks_in_use) {
    int32_t a[32], b[32], c[160];
    fill(a, 32, 1);
    fill(b, 32, 1000);
    fill(c, 160, 20000);
    struct kv_seq sa, sb, sc, held;
    kv_seq_init(&sa, g_kv);
    kv_seq_init(&sb, g_kv);
    kv_seq_init(&sc, g_kv);
    kv_seq_init(&held, g_kv);
    compute(&sa, a, 32);
    compute(&sb, b, 32);
    kv_seq_finish(g_kv, &sa); /* a's blocks become evictable first: the least recent */
    kv_seq_finish(g_kv, &sb);
    ck_assert_int_eq(kv_cache_n_blocks_evictable(g_kv), 4);
    /* held keeps b's blocks in use. */
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &held, b, 32), 32);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 8);
    /* 8 fresh blocks are wanted: 6 from the stack, then a's 2 are evicted; b's are not. */
    ck_assert_int_eq(kv_seq_reserve(g_kv, &sc, 8 * KV_BLOCK_SIZE), KV_OK);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 0);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &sc, 9 * KV_BLOCK_SIZE), KV_ERR_NO_BLOCKS);
    kv_seq_finish(g_kv, &sc);
    kv_seq_init(&sc, g_kv);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &sc, a, 32), 0); /* evicted */
    kv_seq_finish(g_kv, &sc);
    kv_seq_init(&sc, g_kv);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &sc, b, 32), 32); /* in use: kept */
    kv_seq_finish(g_kv, &sc);
    kv_seq_finish(g_kv, &held);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
}
END_TEST

START_TEST(test_prefix_cache_block_loses_its_key_before_it_is_rewritten) {
    int32_t a[48];
    fill(a, 48, 77);
    struct kv_seq s, t;
    kv_seq_init(&s, g_kv);
    kv_seq_init(&t, g_kv);
    compute(&s, a, 48);
    ck_assert_int_eq(kv_cache_n_blocks_cached(g_kv), 3);
    /* A fork shares keyed blocks; its write into block 2 copies it, the original keeps its
     * key. */
    kv_seq_fork(g_kv, &t, &s);
    kv_seq_truncate(g_kv, &t, 40);
    ck_assert_int_eq(t.n_keyed, 2);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &t, 1), KV_OK);
    ck_assert_int_ne(t.blocks[2], s.blocks[2]);
    ck_assert_int_eq(g_kv->flags[t.blocks[2]], 0);
    ck_assert_int_eq(kv_cache_n_blocks_cached(g_kv), 3);
    kv_seq_finish(g_kv, &t);
    /* Sole holder: truncating into a keyed block and writing it drops the key in place. */
    int32_t old = s.blocks[2];
    kv_seq_truncate(g_kv, &s, 40);
    ck_assert_int_eq(kv_seq_reserve(g_kv, &s, 1), KV_OK);
    ck_assert_int_eq(s.blocks[2], old);
    ck_assert_int_eq(g_kv->flags[old], 0);
    ck_assert_int_eq(kv_cache_n_blocks_cached(g_kv), 2);
    kv_seq_finish(g_kv, &s);
    kv_seq_init(&s, g_kv);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &s, a, 48), 32);
    kv_seq_finish(g_kv, &s);
    /* The same prefix computed twice at once: one block is found, both work. */
    struct kv_seq u, v, w;
    kv_seq_init(&u, g_kv);
    kv_seq_init(&v, g_kv);
    kv_seq_init(&w, g_kv);
    int32_t d[32];
    fill(d, 32, 900);
    compute(&u, d, 32);
    compute(&v, d, 32);
    ck_assert_int_eq(kv_seq_match_prefix(g_kv, &w, d, 32), 32);
    kv_seq_finish(g_kv, &u);
    kv_seq_finish(g_kv, &v);
    kv_seq_finish(g_kv, &w);
    ck_assert_int_eq(kv_cache_n_blocks_free(g_kv), 10);
}
END_TEST

static Suite *kv_suite(void) {
    Suite *s = suite_create("kv_cache");
    TCase *tc = tcase_create("blocks");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_pool_size_follows_budget);
    tcase_add_test(tc, test_reserve_takes_whole_blocks_and_finish_returns_them);
    tcase_add_test(tc, test_reserve_is_all_or_nothing_when_out_of_blocks);
    tcase_add_test(tc, test_reserve_refuses_past_the_context);
    tcase_add_test(tc, test_fork_shares_blocks_and_copies_on_write);
    tcase_add_test(tc, test_copy_on_write_counts_toward_the_reservation);
    tcase_add_test(tc, test_f16_cache_halves_blocks_and_copies_them_whole);
    tcase_add_test(tc, test_truncate_frees_blocks_past_the_end);
    tcase_add_test(tc, test_prefix_cache_matches_whole_blocks_of_an_equal_prefix);
    tcase_add_test(tc, test_prefix_cache_evicts_least_recent_and_never_blocks_in_use);
    tcase_add_test(tc, test_prefix_cache_block_loses_its_key_before_it_is_rewritten);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    log_set_level(LOG_LEVEL_WARN);
    SRunner *sr = srunner_create(kv_suite());
    srunner_run_all(sr, CK_NORMAL);
    int n_failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
