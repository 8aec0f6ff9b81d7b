/* spin: a CPU-bound loop that reports its work per CPU-second, for telling whether
 * two busy CPUs of this machine run slower than one (shared physical cores, caches,
 * memory bandwidth). Used by test/bench/cpu-split.sh; docs/benchmarks.md, "Where the
 * lab's replay loses its CPU".
 *
 *   spin MODE SECONDS    MODE: alu (registers only) | mem:KIB (dependent random
 *                        reads over a KIB KiB buffer: 512 stays in L2, 16384 in L3)
 *
 * Prints one JSON line: iterations per CPU second (the thread's own CPU clock, so
 * time it spent preempted does not count) and the CPU share it got.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: spin alu|mem:KIB SECONDS\n");
        return 2;
    }
    double secs = atof(argv[2]);
    size_t n = 0;
    uint32_t *next = NULL;
    if (strncmp(argv[1], "mem:", 4) == 0) {
        n = (size_t)atol(argv[1] + 4) * 1024 / sizeof(uint32_t);
        next = malloc(n * sizeof(uint32_t));
        if (!next || n < 2) {
            fprintf(stderr, "spin: bad buffer size\n");
            return 2;
        }
        /* One random cycle through the buffer (Sattolo), so each read depends on
         * the last and the prefetcher cannot guess it. */
        for (size_t i = 0; i < n; i++) next[i] = (uint32_t)i;
        uint64_t r = 88172645463325252ull;
        for (size_t i = n - 1; i > 0; i--) {
            r ^= r << 13; r ^= r >> 7; r ^= r << 17;
            size_t j = r % i;
            uint32_t t = next[i]; next[i] = next[j]; next[j] = t;
        }
    } else if (strcmp(argv[1], "alu") != 0) {
        fprintf(stderr, "spin: unknown mode %s\n", argv[1]);
        return 2;
    }
    double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_THREAD_CPUTIME_ID);
    uint64_t iters = 0, x = 1;
    uint32_t p = 0;
    while (now(CLOCK_MONOTONIC) - w0 < secs) {
        for (int k = 0; k < 100000; k++) {
            if (next) {
                p = next[p];
            } else {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            }
        }
        iters += 100000;
    }
    double w = now(CLOCK_MONOTONIC) - w0, c = now(CLOCK_THREAD_CPUTIME_ID) - c0;
    printf("{\"mode\":\"%s\",\"wall_s\":%.3f,\"cpu_s\":%.3f,\"cpu_share\":%.3f,\"m_iter_per_cpu_s\":%.2f,\"sink\":%llu}\n",
           argv[1], w, c, c / w, iters / c / 1e6, (unsigned long long)(x + p));
    return 0;
}
