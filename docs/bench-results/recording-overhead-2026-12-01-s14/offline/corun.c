/* corun DUTY PERIOD_US KIB: on the calling CPU, each period run busy for DUTY of it
 * over a KIB KiB buffer (a line-stride walk), then sleep the rest: a model of a
 * process that shares a core with the recording QEMU (agent A). */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    double duty = atof(argv[1]), period = atof(argv[2]) / 1e6;
    size_t n = (size_t)atol(argv[3]) * 1024;
    volatile unsigned char *b = calloc(n, 1);
    size_t i = 0;
    for (;;) {
        double t0 = now();
        while (now() - t0 < duty * period)
            for (int k = 0; k < 64; k++) { b[i] += 1; i = (i + 4160) % n; }
        usleep((useconds_t)((1 - duty) * period * 1e6));
    }
}
