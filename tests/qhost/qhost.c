/* qhost — a stand-in for the q process, so the q extension can be tested without a licensed q.
 *
 * q provides its C API (k.h) to the shared libraries it loads with `2:`. Most of it (constructors, r0, m4,
 * the memory pools) is KX's own code in libe.so, which this library links. What libe lacks or fakes —
 * `k(0,…)` (libe returns a fake error), `krr`/`orr` (libe returns null), `sd1`/`sd0`/`sd0x` (absent) and `dot`
 * — is defined here. Loaded with RTLD_GLOBAL before the extension, these definitions come first in the
 * global scope, so the extension binds to them: the first test proves it.
 *
 *   k(0, name, args…, (K)0)  records the call, hands (name, args) to the handler the test installed, then
 *                            releases the consumed args, as q does; returns the handler's result or (::).
 *   krr(s) / orr(s)          record s (q keeps the pointer: it must be static) and return an error marker
 *                            (type -128, s = the message) owned by the host.
 *   sd1(fd, f) / sd0 / sd0x  a table of fd → handler; qhost_loop() polls them and calls the handlers on
 *                            the calling thread — q's main thread.
 * Counters say how often each was used and whether any was called from a thread other than the one that
 * called qhost_init() (only q's main thread may call into q).
 *
 * Bench hooks time the extension's `pub` and `pubbatch` from C, without Python in the loop (summaries, or the
 * raw per-call timings: qhost_time_calls).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "k.h"

extern K m4(int);

#define MAXFD 256
#define MAXARGS 8

typedef K (*sdfn)(int);
/* The test's handler for k(0,…): gets the callback name and its arguments (borrowed: the host releases
 * them after the handler returns). Returns a K result (owned by the caller) or NULL for (::). */
typedef K (*handler_fn)(const char *name, int n, K *args);

static struct {
    int fd;
    sdfn f;
} fds[MAXFD];
static int nfds;
static handler_fn handler;
static pthread_t main_thread;
static int have_main;

enum {
    ST_K,            /* k(0,…) calls */
    ST_K_WRONG,      /* calls into q from another thread (k, sd1, sd0, sd0x) */
    ST_KRR,          /* krr/orr calls */
    ST_SD1,
    ST_SD0,
    ST_SD0X,
    ST_HANDLER,      /* fd handler invocations by qhost_loop */
    ST_K_HANDLE,     /* k(h≠0,…): not supported by the host */
    ST_DOT,
    ST_N
};
static long stats[ST_N];

static __thread struct k0 err_marker;
static __thread const char *last_err;

static void check_thread(void) {
    if (have_main && !pthread_equal(pthread_self(), main_thread))
        __atomic_add_fetch(&stats[ST_K_WRONG], 1, __ATOMIC_SEQ_CST);
}

K qhost_error(const char *msg);

/* ---- q's API, host side ---- */

K krr(const char *s) {
    __atomic_add_fetch(&stats[ST_KRR], 1, __ATOMIC_SEQ_CST);
    last_err = s;
    memset(&err_marker, 0, sizeof err_marker);
    err_marker.t = -128;
    err_marker.s = (char *)s;
    return &err_marker;
}

K orr(const char *s) { return krr(s); }

K k(int h, const char *s, ...) {
    K args[MAXARGS];
    int n = 0;
    va_list ap;
    va_start(ap, s);
    for (;;) {
        K a = va_arg(ap, K);
        if (!a)
            break;
        if (n < MAXARGS)
            args[n++] = a;
        else
            r0(a);
    }
    va_end(ap);
    check_thread();
    if (h != 0) {
        __atomic_add_fetch(&stats[ST_K_HANDLE], 1, __ATOMIC_SEQ_CST);
        for (int i = 0; i < n; i++)
            r0(args[i]);
        return qhost_error("host: k(h,...) with h!=0 is not supported");
    }
    __atomic_add_fetch(&stats[ST_K], 1, __ATOMIC_SEQ_CST);
    K r = handler ? handler(s, n, args) : 0;
    for (int i = 0; i < n; i++)
        r0(args[i]);
    return r ? r : ka(101);
}

K sd1(int d, sdfn f) {
    check_thread();
    __atomic_add_fetch(&stats[ST_SD1], 1, __ATOMIC_SEQ_CST);
    if (d < 0) {
        d = -d;
        fcntl(d, F_SETFL, fcntl(d, F_GETFL) | O_NONBLOCK);
    }
    for (int i = 0; i < nfds; i++)
        if (fds[i].fd == d) {
            fds[i].f = f;
            return ki(d);
        }
    if (nfds == MAXFD)
        return krr("host: too many fds");
    fds[nfds].fd = d;
    fds[nfds].f = f;
    nfds++;
    return ki(d);
}

static void remove_fd(int d) {
    for (int i = 0; i < nfds; i++)
        if (fds[i].fd == d) {
            fds[i] = fds[--nfds];
            return;
        }
}

void sd0(int d) {
    check_thread();
    __atomic_add_fetch(&stats[ST_SD0], 1, __ATOMIC_SEQ_CST);
    remove_fd(d);
    close(d);
}

void sd0x(int d, int f) {
    check_thread();
    __atomic_add_fetch(&stats[ST_SD0X], 1, __ATOMIC_SEQ_CST);
    remove_fd(d);
    if (f)
        close(d);
}

K dot(K f, K x) {
    (void)f;
    (void)x;
    __atomic_add_fetch(&stats[ST_DOT], 1, __ATOMIC_SEQ_CST);
    return krr("host: dot is not supported");
}

/* ---- harness control ---- */

/* The calling thread becomes q's main thread. */
void qhost_init(void) {
    main_thread = pthread_self();
    have_main = 1;
}

void qhost_set_handler(handler_fn f) { handler = f; }

long qhost_stat(int which) { return which >= 0 && which < ST_N ? stats[which] : -1; }
void qhost_reset_stats(void) { memset(stats, 0, sizeof stats); }

/* The marker krr returns on this thread, and the last message given to krr. */
K qhost_err_marker(void) { return &err_marker; }
const char *qhost_last_err(void) { return last_err; }

/* Where p lives: the file name of the loaded object whose segments contain it (static data), else NULL
 * (heap, stack). */
const char *qhost_object_of(const void *p) {
    Dl_info info;
    if (p && dladdr(p, &info) && info.dli_fname)
        return info.dli_fname;
    return 0;
}

int qhost_nfds(void) { return nfds; }
int qhost_fd(int i) { return i >= 0 && i < nfds ? fds[i].fd : -1; }

/* A q error object as a callback returns it (type -128; released by the caller with r0). */
K qhost_error(const char *msg) {
    K e = ka(-128);
    e->s = sn((char *)msg, (int)strlen(msg));
    return e;
}

/* Used bytes of libe's pools on this thread (m4(0)'s first item). */
long long qhost_used(void) {
    K m = m4(0);
    long long u = (m && m->t == KJ && m->n > 0) ? kJ(m)[0] : -1;
    if (m)
        r0(m);
    return u;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* q's event loop for up to `ms` milliseconds: poll the registered fds, call handlers of the readable ones
 * on this thread, release their results. Returns the number of handler calls. `ms` 0: one non-blocking
 * round. */
long qhost_loop(int ms) {
    long calls = 0;
    long long end = now_ns() + (long long)ms * 1000000LL;
    for (;;) {
        struct pollfd p[MAXFD];
        int n = nfds;
        for (int i = 0; i < n; i++) {
            p[i].fd = fds[i].fd;
            p[i].events = POLLIN;
            p[i].revents = 0;
        }
        long long left = end - now_ns();
        int to = left > 0 ? (int)((left + 999999) / 1000000) : 0;
        int r = n ? poll(p, n, to) : (to ? (usleep(to * 1000), 0) : 0);
        if (r < 0 && errno != EINTR)
            return -1;
        for (int i = 0; r > 0 && i < n; i++) {
            if (!(p[i].revents & (POLLIN | POLLERR | POLLHUP)))
                continue;
            sdfn f = 0;
            for (int j = 0; j < nfds; j++) /* still registered? (a handler may have removed it) */
                if (fds[j].fd == p[i].fd)
                    f = fds[j].f;
            if (!f)
                continue;
            __atomic_add_fetch(&stats[ST_HANDLER], 1, __ATOMIC_SEQ_CST);
            calls++;
            K res = f(p[i].fd);
            if (res && res != &err_marker)
                r0(res);
        }
        if (now_ns() >= end)
            return calls;
    }
}

/* ---- bench hooks: caller-thread cost of the extension's calls, timed in C ---- */

typedef K (*fn4)(K, K, K, K);

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static void summarise(long long *t, long n, double per, double *out) {
    qsort(t, n, sizeof *t, cmp_ll);
    double sum = 0;
    for (long i = 0; i < n; i++)
        sum += t[i];
    out[0] = t[n / 2] / per;                   /* median */
    out[1] = t[(long)((n - 1) * 0.999)] / per; /* p99.9 */
    out[2] = sum / n / per;                    /* mean */
    out[3] = t[n - 1] / per;                   /* max */
}

/* Call f(topic; msg; qos; retain) n times; out = {median, p99.9, mean, max} ns per call. Returns the number
 * of calls that signalled an error (e.g. 'queue full'), or -1. The event loop is run every `loop_every`
 * calls (0: never) so callbacks are drained as q would between statements. */
long qhost_bench_pub(fn4 f, K topic, K msg, K qos, K ret, long n, int loop_every, double *out) {
    if (n <= 0)
        return -1;
    long long *t = malloc(sizeof(long long) * n);
    if (!t)
        return -1;
    long errors = 0;
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        K r = f(topic, msg, qos, ret);
        long long t1 = now_ns();
        t[i] = t1 - t0;
        if (r == &err_marker)
            errors++;
        else if (r)
            r0(r);
        if (loop_every && (i + 1) % loop_every == 0)
            qhost_loop(0);
    }
    summarise(t, n, 1.0, out);
    free(t);
    return errors;
}

/* The same for a batch call f(topic; msgs; qos; retain) with `per` messages per call: out is ns per message. */
long qhost_bench_batch(fn4 f, K topic, K msgs, K qos, K ret, long per, long iters, int loop_every,
                       double *out) {
    if (iters <= 0 || per <= 0)
        return -1;
    long long *t = malloc(sizeof(long long) * iters);
    if (!t)
        return -1;
    long errors = 0;
    for (long i = 0; i < iters; i++) {
        long long t0 = now_ns();
        K r = f(topic, msgs, qos, ret);
        long long t1 = now_ns();
        t[i] = t1 - t0;
        if (r == &err_marker)
            errors++;
        else if (r)
            r0(r);
        if (loop_every && (i + 1) % loop_every == 0)
            qhost_loop(0);
    }
    summarise(t, iters, (double)per, out);
    free(t);
    return errors;
}

/* The raw timings behind the summaries: call f(a; b; c; d) n times, store each call's ns in t[0..n). Returns
 * the number of calls that signalled an error (e.g. 'queue full'), or -1. The event loop runs every
 * `loop_every` calls (0: never). For callers that pool several rounds or need the tail exactly. */
long qhost_time_calls(fn4 f, K a, K b, K c, K d, long n, int loop_every, long long *t) {
    if (n <= 0 || !t)
        return -1;
    long errors = 0;
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        K r = f(a, b, c, d);
        long long t1 = now_ns();
        t[i] = t1 - t0;
        if (r == &err_marker)
            errors++;
        else if (r)
            r0(r);
        if (loop_every && (i + 1) % loop_every == 0)
            qhost_loop(0);
    }
    return errors;
}
