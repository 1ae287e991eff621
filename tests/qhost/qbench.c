/* qbench — the q layer as a benchmark contender (benches/run, column "q" and "q-batch").
 *
 *   qbench [--lib libqmqtt.so] [--batch N] --uri U --cafile F --topic T --qos Q --id I --count N --size S
 *
 * Does what a q publisher does, with q's side played by the host harness (qhost.so: KX's libe.so for the
 * K API, the host's k/krr/sd1 and its event loop): loads the extension as q's `2:` would (dlopen, local
 * symbols; --lib or $QMQTT_LIB), `.mqtt.init[]`, `.mqtt.conn[U;I;enlist[`trustStore]!enlist`F]` through
 * KX's conn wrapper (connX with (enlist[`]!enlist(::)),opts), then publishes N messages of S bytes at QoS Q
 * on T:
 *
 *   without --batch: one `.mqtt.pubx[T;msg;Q;0b]` per message (the exported `pub`); a 'queue full' error
 *                    sends the program back to q's event loop for a moment, then the same message is retried;
 *   --batch B:       `.mqtt.pubbatch[T;B#enlist msg;Q;0b]` per B messages. pubbatch may queue part of a batch
 *                    before 'queue full' without saying how much, so the program keeps at most half the
 *                    publish queue outstanding (published minus acknowledged / sent) and treats 'queue full'
 *                    as a failure.
 *
 * Every 512 messages it runs one non-blocking round of q's event loop (the msgsent callbacks of QoS 1 run
 * there, on this thread, as in q). Done: QoS 0 when `.mqtt.stats[]`sent` reaches N, QoS 1/2 when N msgsent
 * callbacks have arrived. Prints `RESULT t_start=NS t_done=NS ...` (CLOCK_MONOTONIC: the clock of the bench
 * and its subscriber), then disconnects. The per-message loop is C: no interpreter is measured. Exit 1 with a
 * message on stderr when anything fails (including a call into q from a thread other than this one).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "k.h"

typedef K (*fn1)(K);
typedef K (*fn3)(K, K, K);
typedef K (*fn4)(K, K, K, K);
typedef K (*handler_fn)(const char *, int, K *);

/* qhost.so (linked) */
void qhost_init(void);
void qhost_set_handler(handler_fn);
K qhost_err_marker(void);
const char *qhost_last_err(void);
long qhost_loop(int ms);
long qhost_stat(int which);
int qhost_fd(int i);
int qhost_nfds(void);

static long sent_cb, bad_cb, disconn_cb;
static long long max_token;
static char disconn_cause[256];

static K on_k(const char *name, int n, K *a) {
    if (!strcmp(name, ".mqtt.msgsent")) {
        if (n == 1 && a[0]->t == -KJ) {
            sent_cb++;
            if (a[0]->j > max_token)
                max_token = a[0]->j;
        } else
            bad_cb++;
    } else if (!strcmp(name, ".mqtt.disconn")) {
        disconn_cb++;
        if (n == 1 && a[0]->t == KC) {
            int len = a[0]->n < (long long)sizeof disconn_cause - 1 ? (int)a[0]->n : (int)sizeof disconn_cause - 1;
            memcpy(disconn_cause, kC(a[0]), len);
            disconn_cause[len] = 0;
        }
    }
    return 0;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "qbench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static void *sym(void *h, const char *n) {
    void *p = dlsym(h, n);
    if (!p)
        die("the extension has no export %s (built with --no-default-features? the q feature exports them)", n);
    return p;
}

static K marker;
static fn1 stats_fn;

/* The error text if r is the host's error marker, else NULL. */
static const char *err_of(K r) { return r == marker ? qhost_last_err() : NULL; }

/* `.mqtt.stats[]`key (a long), or -1. */
static long long stat_of(const char *key) {
    K nil = ka(101);
    K d = stats_fn(nil);
    r0(nil);
    long long v = -1;
    if (!d || d == marker || d->t != XD)
        return v;
    K keys = kK(d)[0], vals = kK(d)[1];
    for (long long i = 0; keys->t == KS && i < keys->n; i++)
        if (!strcmp(kS(keys)[i], key)) {
            K x = vals->t == 0 ? kK(vals)[i] : NULL;
            if (x && x->t == -KJ)
                v = x->j;
            else if (vals->t == KJ)
                v = kJ(vals)[i];
        }
    r0(d);
    return v;
}

/* Back to q's event loop for a moment: run the pending callbacks, then give the I/O thread ~200 µs. */
static void yield_to_q(void) {
    qhost_loop(0);
    usleep(200);
}

static void usage(void) {
    fprintf(stderr, "usage: qbench [--lib libqmqtt.so] [--batch N] --uri U --cafile F --topic T --qos Q --id I "
                    "--count N --size S\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *lib = getenv("QMQTT_LIB"), *uri = 0, *cafile = 0, *topic = 0, *id = "qbench";
    long qos = 1, count = 0, size = 64, batch = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--lib"))
            lib = v;
        else if (!strcmp(a, "--uri"))
            uri = v;
        else if (!strcmp(a, "--cafile"))
            cafile = v;
        else if (!strcmp(a, "--topic"))
            topic = v;
        else if (!strcmp(a, "--id"))
            id = v;
        else if (!strcmp(a, "--qos"))
            qos = atol(v);
        else if (!strcmp(a, "--count"))
            count = atol(v);
        else if (!strcmp(a, "--size"))
            size = atol(v);
        else if (!strcmp(a, "--batch"))
            batch = atol(v);
        else
            usage();
        i++;
    }
    if (!lib || !uri || !topic || count <= 0 || size < 0 || qos < 0 || qos > 2 || batch < 0)
        usage();

    qhost_init();
    qhost_set_handler(on_k);
    marker = qhost_err_marker();
    void *L = dlopen(lib, RTLD_NOW);
    if (!L)
        die("cannot load the extension: %s", dlerror());
    fn1 init = sym(L, "init"), disconnect = sym(L, "disconnect");
    fn3 connX = sym(L, "connX");
    fn4 pub = sym(L, "pub"), pubbatch = sym(L, "pubbatch");
    stats_fn = sym(L, "stats");

    K nil = ka(101);
    K r = init(nil);
    if (err_of(r))
        die(".mqtt.init: %s", err_of(r));
    /* .mqtt.conn[uri;id;opts]: connX[uri;id](enlist[`]!enlist(::)),opts */
    int nopt = cafile ? 2 : 1;
    K keys = ktn(KS, nopt), vals = ktn(0, nopt);
    kS(keys)[0] = sn("", 0);
    kK(vals)[0] = ka(101);
    if (cafile) {
        kS(keys)[1] = sn((char *)"trustStore", 10);
        kK(vals)[1] = ks((char *)cafile);
    }
    K opts = xD(keys, vals), kuri = ks((char *)uri), kid = ks((char *)id);
    r = connX(kuri, kid, opts);
    if (err_of(r)) {
        fprintf(stderr, "qbench: .mqtt.conn[`$\"%s\";`%s;...]: '%s (lastError in .mqtt.stats[]: see the log)\n",
                uri, id, err_of(r));
        return 1;
    }
    r0(kuri);
    r0(kid);
    r0(opts);

    K kt = ks((char *)topic), kq = kj(qos), kr = kb(0);
    K msg = ktn(KC, size);
    memset(kC(msg), 'x', size);
    long long deadline = now_ns() + (120LL + count / 2000) * 1000000000LL;
    long long t_start = now_ns(), t_done;
    long published = 0;
    if (!batch) {
        while (published < count) {
            r = pub(kt, msg, kq, kr);
            const char *e = err_of(r);
            if (e) {
                if (strcmp(e, "queue full"))
                    die(".mqtt.pubx: '%s", e);
                yield_to_q();
                if (now_ns() > deadline)
                    die("the publish queue stayed full (%s)", "timed out");
                continue;
            }
            r0(r);
            if (++published % 512 == 0)
                qhost_loop(0);
        }
    } else {
        /* B#enlist msg: one list of B references to the same payload, as q builds it. */
        K full = ktn(0, batch), tail = NULL;
        for (long i = 0; i < batch; i++)
            kK(full)[i] = r1(msg);
        if (count % batch) {
            tail = ktn(0, count % batch);
            for (long i = 0; i < count % batch; i++)
                kK(tail)[i] = r1(msg);
        }
        /* The publish queue's bounds (defaults 4 MiB, 100 000 messages; a record is the topic, the payload
         * and a small header): keep at most half of it outstanding. */
        long rec = (long)strlen(topic) + size + 64;
        long window = (4L << 20) / 2 / rec;
        if (window > 50000)
            window = 50000;
        if (window < batch)
            window = batch;
        long done = 0;
        long since_loop = 0;
        while (published < count) {
            K m = count - published >= batch ? full : tail;
            long n = m->n;
            while (published - done + n > window) {
                done = qos ? sent_cb : stat_of("sent");
                if (published - done + n <= window)
                    break;
                yield_to_q();
                if (now_ns() > deadline)
                    die("messages are not going out (%s)", "timed out");
            }
            r = pubbatch(kt, m, kq, kr);
            const char *e = err_of(r);
            if (e)
                die(".mqtt.pubbatch: '%s", e);
            if (r->t != KJ || r->n != n)
                die(".mqtt.pubbatch did not return %s", "one token per message");
            r0(r);
            published += n;
            since_loop += n;
            if (since_loop >= 512) {
                since_loop = 0;
                qhost_loop(0);
            }
        }
        r0(full);
        if (tail)
            r0(tail);
    }
    /* Until everything is out (QoS 0) or acknowledged (QoS 1/2): q's event loop, woken by the event fd. */
    for (;;) {
        qhost_loop(0);
        if (qos ? sent_cb >= count : stat_of("sent") >= count)
            break;
        if (disconn_cb)
            die("connection lost: %s", disconn_cause);
        if (now_ns() > deadline)
            die("not everything was %s in time", qos ? "acknowledged" : "sent");
        if (qos && qhost_nfds() > 0) {
            struct pollfd p = {.fd = qhost_fd(0), .events = POLLIN};
            poll(&p, 1, 10);
        } else
            usleep(200);
    }
    t_done = now_ns();
    long long writes = stat_of("socketWrites"), wakeups = stat_of("wakeups"), bytes = stat_of("bytesOut");
    K ms = kj(5000);
    r = disconnect(ms);
    if (err_of(r))
        die(".mqtt.disconnect: '%s", err_of(r));
    r0(ms);
    if (bad_cb)
        die("msgsent callbacks with the wrong argument types (%s)", "expected one long");
    if (qhost_stat(1))
        die("the extension called into q from another thread (%s)", "only q's main thread may");
    if (qos && max_token < count)
        die("tokens: the last acknowledged token is below the count (%s)", "lost acknowledgements?");
    printf("RESULT t_start=%lld t_done=%lld writes=%lld wakeups=%lld bytes_out=%lld\n", t_start, t_done,
           writes < 0 ? 0 : writes, wakeups < 0 ? 0 : wakeups, bytes < 0 ? 0 : bytes);
    r0(kt);
    r0(kq);
    r0(kr);
    r0(msg);
    r0(nil);
    return 0;
}
