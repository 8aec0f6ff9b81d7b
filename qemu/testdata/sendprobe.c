/*
 * sendprobe: test-only LD_PRELOAD library. It never flushes anything; it
 * reports, for every datagram QEMU sends, how much of the rr log was in the
 * file at that moment and how much QEMU had written into its stdio stream.
 * A QEMU that flushes its log before a frame leaves shows equal numbers.
 *
 * Environment:
 *   FTVMD_RRFILE        path QEMU opens for rr=record,rrfile=...; exact match.
 *   FTVMD_PROBE_FD      fd number the lines "send <fd> <len> <ftell> <size>\n"
 *                       are written to.
 *
 * Both numbers are read while holding the stream's lock (flockfile), so no
 * other thread writes or flushes the log in between: <ftell> is the logical
 * length of the log (file plus stdio buffer), <size> the file's length.
 *
 *   FTVMD_PROBE_STALE_US  if set, a thread samples both every so many
 *                         microseconds and notes when each new logical length
 *                         was first seen. When the file grows past such a
 *                         length that was seen 1 ms or more before, it writes
 *                         "stale_ep <first seen, unix ns> <age us> <held us>
 *                         <waited us>\n": log bytes stayed out of the file for
 *                         <age> by the sampler's clock, at least <held> (first
 *                         seen to the last sample that still found them out:
 *                         a sampler that was kept off the CPU does not make
 *                         it longer), and the flush thread spent <waited> of
 *                         it (up to the sample that found them in the file)
 *                         runnable but off the CPU: a busy host's doing, not
 *                         the engine's. When QEMU closes the log: "stale
 *                         <samples> <samples with bytes out> <flushes by the
 *                         flush thread>\n".
 *
 * The flush thread is the first thread QEMU creates after it opened the log
 * (the log-stream engine's replay_enable() starts it right away; a stock QEMU
 * has none, and the thread this picks flushes nothing). Its time off the CPU
 * is its run_delay in /proc/self/task/<tid>/schedstat, which counts a wait
 * once it ends: read after it flushed, it covers every wait before the flush.
 * Until the thread first runs it has waited since it was created.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef FILE *(*fopen_fn)(const char *, const char *);
typedef int (*fclose_fn)(FILE *);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef int (*fflush_fn)(FILE *);
typedef int (*pthread_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static fopen_fn real_fopen, real_fopen64;
static fclose_fn real_fclose;
static sendto_fn real_sendto;
static send_fn real_send;
static fflush_fn real_fflush;
static pthread_create_fn real_pthread_create;

/* The flush thread (atomics: set from QEMU's threads without mu, since a
 * flush holds the stream's lock, which the sampler takes under mu). */
static int flush_armed;            /* the next thread created is the flush thread */
static long long flush_created_ns; /* CLOCK_MONOTONIC; 0: not created yet */
static pid_t flush_tid;            /* 0 until it runs */
static long long flush_count;      /* fflush calls of the log by it */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *rr_file;
static int probe_fd = -1;
static long stale_every_us;
/* Guarded by mu: the stale sampler's findings. */
static long long samples, stale_samples;
/* Guarded by mu: logical lengths not yet in the file, oldest first. */
#define SEEN_MAX 65536
static struct seen {
	long pos;
	long long mono_ns, unix_ns, waited_ns;
} seen[SEEN_MAX];
static int seen_head, seen_len;
/* Guarded by mu: when the previous sample was taken. */
static long long prev_mono_ns;

#define RESOLVE(var, name)                                 \
	do {                                                   \
		if (!(var))                                        \
			*(void **)(&(var)) = dlsym(RTLD_NEXT, (name)); \
	} while (0)

__attribute__((constructor)) static void probe_init(void)
{
	const char *d = getenv("FTVMD_PROBE_FD");

	unsetenv("LD_PRELOAD");
	if (d && *d)
		probe_fd = atoi(d);
	d = getenv("FTVMD_PROBE_STALE_US");
	if (d && *d)
		stale_every_us = atol(d);
}

static long long clock_ns(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void report(const char *line, int n)
{
	if (n > 0 && probe_fd >= 0)
		(void)!write(probe_fd, line, (size_t)n);
}

/* flush_waited is how long the flush thread has been runnable but off the
 * CPU, up to t (see the top). */
static long long flush_waited(long long t)
{
	static long long last; /* the thread's last reading: it may have exited */
	pid_t tid = __atomic_load_n(&flush_tid, __ATOMIC_ACQUIRE);
	long long created = __atomic_load_n(&flush_created_ns, __ATOMIC_ACQUIRE);
	char path[64], buf[128];
	unsigned long long run_ns, delay_ns;
	ssize_t n;
	int fd;

	if (!tid)
		return created ? t - created : 0;
	snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat", (int)tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return last;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n > 0) {
		buf[n] = 0;
		if (sscanf(buf, "%llu %llu", &run_ns, &delay_ns) == 2)
			last = (long long)delay_ns;
	}
	return last;
}

/* flushed drops the lengths the file has reached and reports the oldest if
 * it waited 1 ms or more. Called with mu held. */
static void flushed(long long size, long long t)
{
	long long oldest_mono = 0, oldest_unix = 0, oldest_waited = 0;

	while (seen_len > 0 && seen[seen_head].pos <= size) {
		if (!oldest_mono) {
			oldest_mono = seen[seen_head].mono_ns;
			oldest_unix = seen[seen_head].unix_ns;
			oldest_waited = seen[seen_head].waited_ns;
		}
		seen_head = (seen_head + 1) % SEEN_MAX;
		seen_len--;
	}
	if (oldest_mono && t - oldest_mono >= 1000000) {
		char buf[160];
		long long held = prev_mono_ns > oldest_mono ? prev_mono_ns - oldest_mono : 0;

		report(buf, snprintf(buf, sizeof(buf), "stale_ep %lld %lld %lld %lld\n", oldest_unix, (t - oldest_mono) / 1000,
				     held / 1000, (flush_waited(t) - oldest_waited) / 1000));
	}
}

/* log_lengths reads the log's logical and on-disk lengths under the stream's
 * lock. Called with mu held and rr_file set. */
static void log_lengths(long *pos, long long *size)
{
	struct stat st;

	flockfile(rr_file);
	*pos = ftell(rr_file);
	*size = fstat(fileno(rr_file), &st) == 0 ? (long long)st.st_size : -1;
	funlockfile(rr_file);
}

static void *stale_thread(void *arg)
{
	struct timespec ts = { .tv_sec = stale_every_us / 1000000, .tv_nsec = (stale_every_us % 1000000) * 1000 };

	(void)arg;
	for (;;) {
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&mu);
		if (rr_file) {
			long pos;
			long long size, t = clock_ns(CLOCK_MONOTONIC);

			log_lengths(&pos, &size);
			samples++;
			flushed(size, t);
			if (pos > size) {
				int last = (seen_head + seen_len - 1) % SEEN_MAX;

				stale_samples++;
				if ((seen_len == 0 || seen[last].pos < pos) && seen_len < SEEN_MAX) {
					int i = (seen_head + seen_len) % SEEN_MAX;

					seen[i].pos = pos;
					seen[i].mono_ns = t;
					seen[i].unix_ns = clock_ns(CLOCK_REALTIME);
					seen[i].waited_ns = flush_waited(t);
					seen_len++;
				}
			}
			prev_mono_ns = t;
		}
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

static FILE *capture(const char *path, const char *mode, FILE *f)
{
	const char *want = getenv("FTVMD_RRFILE");

	if (f && path && want && strcmp(want, path) == 0 && mode && strchr(mode, 'w')) {
		pthread_mutex_lock(&mu);
		__atomic_store_n(&rr_file, f, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&mu);
		if (stale_every_us > 0) {
			pthread_t t;

			RESOLVE(real_pthread_create, "pthread_create");
			real_pthread_create(&t, NULL, stale_thread, NULL); /* not QEMU's: not the flush thread */
			pthread_detach(t);
			__atomic_store_n(&flush_armed, 1, __ATOMIC_RELEASE);
		}
	}
	return f;
}

struct start {
	void *(*fn)(void *);
	void *arg;
};

static void *flush_thread_start(void *p)
{
	struct start s = *(struct start *)p;

	free(p);
	__atomic_store_n(&flush_tid, gettid(), __ATOMIC_RELEASE);
	return s.fn(s.arg);
}

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
	int expect = 1;
	struct start *s;
	int err;

	RESOLVE(real_pthread_create, "pthread_create");
	if (!__atomic_compare_exchange_n(&flush_armed, &expect, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return real_pthread_create(t, attr, fn, arg);
	s = malloc(sizeof(*s));
	if (!s)
		return real_pthread_create(t, attr, fn, arg);
	s->fn = fn;
	s->arg = arg;
	__atomic_store_n(&flush_created_ns, clock_ns(CLOCK_MONOTONIC), __ATOMIC_RELEASE);
	err = real_pthread_create(t, attr, flush_thread_start, s);
	if (err) {
		__atomic_store_n(&flush_created_ns, 0, __ATOMIC_RELEASE);
		free(s);
	}
	return err;
}

/* fflush counts the flush thread's flushes of the log: proof that the thread
 * picked is the one that flushes. No mu here: the caller may hold the
 * stream's lock. */
int fflush(FILE *f)
{
	RESOLVE(real_fflush, "fflush");
	if (f && f == __atomic_load_n(&rr_file, __ATOMIC_ACQUIRE) && gettid() == __atomic_load_n(&flush_tid, __ATOMIC_ACQUIRE))
		__atomic_add_fetch(&flush_count, 1, __ATOMIC_RELAXED);
	return real_fflush(f);
}

FILE *fopen(const char *path, const char *mode)
{
	RESOLVE(real_fopen, "fopen");
	return capture(path, mode, real_fopen(path, mode));
}

FILE *fopen64(const char *path, const char *mode)
{
	RESOLVE(real_fopen64, "fopen64");
	return capture(path, mode, real_fopen64(path, mode));
}

int fclose(FILE *f)
{
	RESOLVE(real_fclose, "fclose");
	pthread_mutex_lock(&mu);
	if (f && f == rr_file) {
		__atomic_store_n(&rr_file, NULL, __ATOMIC_RELEASE);
		if (stale_every_us > 0) {
			char buf[96];

			struct stat st;

			if (fstat(fileno(f), &st) == 0)
				flushed((long long)st.st_size, clock_ns(CLOCK_MONOTONIC));
			report(buf, snprintf(buf, sizeof(buf), "stale %lld %lld %lld\n", samples, stale_samples,
					     __atomic_load_n(&flush_count, __ATOMIC_RELAXED)));
		}
	}
	pthread_mutex_unlock(&mu);
	return real_fclose(f);
}

static void probe(int fd, size_t len)
{
	int saved = errno, type = 0;
	socklen_t tl = sizeof(type);

	if (probe_fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_DGRAM) {
		errno = saved;
		return;
	}
	pthread_mutex_lock(&mu);
	if (rr_file) {
		long pos;
		long long size;
		char buf[96];
		int n;

		log_lengths(&pos, &size);
		n = snprintf(buf, sizeof(buf), "send %d %zu %ld %lld\n", fd, len, pos, size);
		report(buf, n);
	}
	pthread_mutex_unlock(&mu);
	errno = saved;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen)
{
	RESOLVE(real_sendto, "sendto");
	probe(fd, len);
	return real_sendto(fd, buf, len, flags, addr, alen);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	RESOLVE(real_send, "send");
	probe(fd, len);
	return real_send(fd, buf, len, flags);
}
