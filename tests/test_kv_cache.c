/*
 * test_kv_cache.c: the paged KV cache: block accounting, all-or-nothing reservation, context
 * limits, fork with reference counts, copy-on-write of a shared block, truncation, and return
 * of every block to the pool. Uses the tiny golden model only for its shape.
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
