/*
 * memory.c: allocation of the large, long-lived arrays (model weights, the KV pool) backed by
 * transparent huge pages where the kernel offers them.
 *
 * A decode step reads every weight and, for each sequence and head, K/V rows 3 KB or more
 * apart across a pool of up to gigabytes; with 4 KB pages nearly every such row is a TLB miss
 * and a page walk. 2 MB pages cover the same bytes with 512 times fewer entries. Debian's
 * default THP mode is "madvise", so the region has to ask for them.
 */
#define _DEFAULT_SOURCE /* MADV_HUGEPAGE */
#include <stdlib.h>
#include <sys/mman.h>

#include <gptd/util.h>

#define HUGE_PAGE_BYTES ((size_t)2 << 20)

void *mem_alloc_large(size_t bytes) {
    if (bytes < HUGE_PAGE_BYTES) {
        return aligned_alloc(64, (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0));
    }
    size_t size = (bytes + HUGE_PAGE_BYTES - 1) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    void *p = aligned_alloc(HUGE_PAGE_BYTES, size);
#ifdef MADV_HUGEPAGE
    if (p != NULL) {
        (void)madvise(p, size, MADV_HUGEPAGE); /* advice only: 4 KB pages if refused */
    }
#endif
    return p;
}
