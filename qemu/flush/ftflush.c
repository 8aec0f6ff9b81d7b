/*
 * libftflush: LD_PRELOAD library that pushes QEMU's record/replay log out of
 * stdio's buffer so that the log file on disk is never more than about
 * FTVMD_FLUSH_US microseconds stale, and always covers every event logged
 * before QEMU emits a network frame.
 *
 * Environment:
 *   FTVMD_RRFILE      path QEMU opens for rr=record,rrfile=...; exact match.
 *   FTVMD_FLUSH_US    periodic flush interval in microseconds (default 1000).
 *   FTVMD_FLUSH_DEBUG fd number; when set, one line "send <fd> <len> <ftell>\n"
 *                     is written to it after each flush-before-send (tests).
 *
 * QEMU calls fopen() before library constructors run, so every real function
 * is resolved lazily with dlsym(RTLD_NEXT, ...).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

typedef FILE *(*fopen_fn)(const char *, const char *);
typedef int (*fclose_fn)(FILE *);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);

static fopen_fn real_fopen, real_fopen64;
static fclose_fn real_fclose;
static sendto_fn real_sendto;
static sendmsg_fn real_sendmsg;
static send_fn real_send;
static write_fn real_write;
static writev_fn real_writev;

/* rr_mu guards rr_file and rr_fd: the flush thread and the send hooks must
 * never fflush a FILE that fclose is freeing. */
static pthread_mutex_t rr_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *rr_file;
static int rr_fd = -1;
static pthread_once_t thread_once = PTHREAD_ONCE_INIT;
static int debug_fd = -1;

#define RESOLVE(var, name)                                 \
	do {                                                   \
		if (!(var))                                        \
			*(void **)(&(var)) = dlsym(RTLD_NEXT, (name)); \
	} while (0)

__attribute__((constructor)) static void ftflush_init(void)
{
	const char *d;

	/* Children (qemu-bridge-helper, scripts) must not inherit us. */
	unsetenv("LD_PRELOAD");
	d = getenv("FTVMD_FLUSH_DEBUG");
	if (d && *d)
		debug_fd = atoi(d);
}

static long flush_interval_us(void)
{
	const char *s = getenv("FTVMD_FLUSH_US");
	long us;

	if (!s || !*s)
		return 1000;
	us = strtol(s, NULL, 10);
	return us > 0 ? us : 1000;
}

static void *flush_thread(void *arg)
{
	long us = flush_interval_us();
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };

	(void)arg;
	for (;;) {
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&rr_mu);
		if (rr_file)
			fflush(rr_file);
		pthread_mutex_unlock(&rr_mu);
	}
	return NULL;
}

static void start_thread(void)
{
	pthread_t t;
	pthread_attr_t attr;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_create(&t, &attr, flush_thread, NULL);
	pthread_attr_destroy(&attr);
}

static FILE *capture(const char *path, const char *mode, FILE *f)
{
	const char *want;

	if (!f || !path)
		return f;
	want = getenv("FTVMD_RRFILE");
	if (!want || strcmp(want, path) != 0 || !mode || !(strchr(mode, 'w') || strchr(mode, 'a')))
		return f;
	pthread_mutex_lock(&rr_mu);
	__atomic_store_n(&rr_fd, fileno(f), __ATOMIC_RELAXED);
	__atomic_store_n(&rr_file, f, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&rr_mu);
	pthread_once(&thread_once, start_thread);
	return f;
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
	if (f) {
		pthread_mutex_lock(&rr_mu);
		if (f == rr_file) {
			__atomic_store_n(&rr_file, NULL, __ATOMIC_RELAXED);
			__atomic_store_n(&rr_fd, -1, __ATOMIC_RELAXED);
		}
		pthread_mutex_unlock(&rr_mu);
	}
	return real_fclose(f);
}

/* captured is the lock-free fast path for write/writev, which QEMU calls
 * often on eventfds and files: no mutex until the rr log is known. */
static int captured(void)
{
	return __atomic_load_n(&rr_file, __ATOMIC_RELAXED) != NULL;
}

/* is_net_fd reports whether fd is a socket or a character device (tap is
 * /dev/net/tun). Regular files, pipes and eventfds are skipped. */
static int is_net_fd(int fd)
{
	struct stat st;

	if (fstat(fd, &st) != 0)
		return 0;
	return S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode);
}

static size_t iov_len_sum(const struct iovec *iov, int n)
{
	size_t sum = 0;

	for (int i = 0; iov && i < n; i++)
		sum += iov[i].iov_len;
	return sum;
}

/* flush_before_send pushes the log out before a frame leaves. It never
 * flushes for writes to the log's own fd: fflush itself writes there. */
static void flush_before_send(int fd, size_t len, int check_type)
{
	int saved = errno;

	pthread_mutex_lock(&rr_mu);
	if (rr_file && fd != rr_fd && (!check_type || is_net_fd(fd))) {
		fflush(rr_file);
		if (debug_fd >= 0) {
			char buf[80];
			int n = snprintf(buf, sizeof(buf), "send %d %zu %ld\n", fd, len, ftell(rr_file));
			RESOLVE(real_write, "write");
			if (n > 0)
				(void)real_write(debug_fd, buf, (size_t)n);
		}
	}
	pthread_mutex_unlock(&rr_mu);
	errno = saved;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen)
{
	RESOLVE(real_sendto, "sendto");
	flush_before_send(fd, len, 0);
	return real_sendto(fd, buf, len, flags, addr, alen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	RESOLVE(real_sendmsg, "sendmsg");
	flush_before_send(fd, msg ? iov_len_sum(msg->msg_iov, (int)msg->msg_iovlen) : 0, 0);
	return real_sendmsg(fd, msg, flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	RESOLVE(real_send, "send");
	flush_before_send(fd, len, 0);
	return real_send(fd, buf, len, flags);
}

ssize_t write(int fd, const void *buf, size_t len)
{
	RESOLVE(real_write, "write");
	if (captured() && fd != __atomic_load_n(&rr_fd, __ATOMIC_RELAXED) && fd != debug_fd)
		flush_before_send(fd, len, 1);
	return real_write(fd, buf, len);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
	RESOLVE(real_writev, "writev");
	if (captured() && fd != __atomic_load_n(&rr_fd, __ATOMIC_RELAXED) && fd != debug_fd)
		flush_before_send(fd, iov_len_sum(iov, n), 1);
	return real_writev(fd, iov, n);
}
