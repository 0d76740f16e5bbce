/*
 * How fast the kernel's copy instruction (rep movsb, what copy_to_user uses on CPUs with FSRM)
 * moves page-aligned 4 KiB pages to a destination N bytes past a page boundary.
 *
 * Why it matters to bench/iscsi.py: a Data-In segment sent with sendfile() reaches a loopback
 * client as page cache pages (page offset 0), and the client's recv copies them into its buffer.
 * iscsi-perf receives into malloc'd 1 MiB buffers, which glibc places 16 bytes past a page
 * boundary; on AMD Zen, rep movsb with (dst - src) mod 4096 in 1..31 runs several times slower.
 *
 * Build and run: gcc -O2 -o /tmp/copy_alignment bench/copy_alignment.c && /tmp/copy_alignment
 * Prints one line per destination offset: "offset <bytes> <microseconds per MiB>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PAGE = 4096, MIB = 1 << 20, SOURCES = 4, ROUNDS = 200 };

static void rep_movsb(void *dst, const void *src, size_t count)
{
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(count) : : "memory");
}

int main(void)
{
    static const int offsets[] = {0, 16, 48, 64, 2048};
    char *source = aligned_alloc(PAGE, (size_t)SOURCES * MIB);
    char *target = aligned_alloc(PAGE, MIB + 2 * PAGE);
    if (source == NULL || target == NULL)
        return 1;
    memset(source, 1, (size_t)SOURCES * MIB);
    memset(target, 2, MIB + 2 * PAGE);
    for (size_t k = 0; k < sizeof offsets / sizeof offsets[0]; k++) {
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (int round = 0; round < ROUNDS; round++)
            for (size_t page = 0; page < MIB; page += PAGE)
                rep_movsb(target + offsets[k] + page, source + (size_t)(round % SOURCES) * MIB + page, PAGE);
        clock_gettime(CLOCK_MONOTONIC, &end);
        double ns = (double)(end.tv_sec - start.tv_sec) * 1e9 + (double)(end.tv_nsec - start.tv_nsec);
        printf("offset %d %.0f\n", offsets[k], ns / 1e3 / ROUNDS);
    }
    return 0;
}
