/* qhost smoke driver: the host harness without Python, for targets where only the C toolchain and qemu-user
 * are at hand (aarch64 gateways under qemu-aarch64).
 *
 *   smoke <qhost.so> <libqmqtt.so> [tcp://127.0.0.1:port]
 *
 * Loads the host (q's API: libe.so + qhost.so) with RTLD_GLOBAL and the extension as q's `2:` would, then
 * checks: errors come back through the host's krr with static strings of the library; without a broker,
 * `pub` says 'not connected'; with a broker, connX (KX's conn-wrapper dictionary), sub, QoS 0/1/2 publishes,
 * msgrcvd/msgsent callbacks on this thread with q's types, pubbatch, stats, disconnect, and libe's used
 * bytes balance around 1000 publish+receive round trips. Prints `smoke: N passed, M failed`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "k.h"

typedef K (*fn1)(K);
typedef K (*fn2)(K, K);
typedef K (*fn3)(K, K, K);
typedef K (*fn4)(K, K, K, K);
typedef K (*handler_fn)(const char *, int, K *);

static int passed, failed;
#define CHECK(c, ...)                                                                                       \
    do {                                                                                                    \
        if (c)                                                                                              \
            passed++;                                                                                       \
        else {                                                                                              \
            failed++;                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            fprintf(stderr, __VA_ARGS__);                                                                   \
            fprintf(stderr, "\n");                                                                          \
        }                                                                                                   \
    } while (0)

static void *H, *L;
static K (*marker)(void);
static const char *(*last_err)(void);
static const char *(*object_of)(const void *);
static long (*loop)(int);
static long long (*used)(void);
static long (*hstat)(int);
static int (*nfds)(void);

static long rcvd, sent, disc, bad_types;
static const char *lib_path; /* the library under test, as given (dladdr names objects by the dlopen path) */

static K on_k(const char *name, int n, K *a) {
    if (!strcmp(name, ".mqtt.msgrcvd")) {
        rcvd++;
        if (n != 2 || a[0]->t != KC || a[1]->t != KC)
            bad_types++;
    } else if (!strcmp(name, ".mqtt.msgsent")) {
        sent++;
        if (n != 1 || a[0]->t != -KJ)
            bad_types++;
    } else if (!strcmp(name, ".mqtt.disconn")) {
        disc++;
        if (n != 1 || a[0]->t != KC)
            bad_types++;
    }
    return 0;
}

static void *sym(void *h, const char *n) {
    void *p = dlsym(h, n);
    if (!p) {
        fprintf(stderr, "smoke: %s missing: %s\n", n, dlerror());
        exit(2);
    }
    return p;
}

/* The error a call signalled ("" when none), checking the string is static data of the library. */
static const char *err_of(K r) {
    if (r != marker())
        return "";
    const char *e = last_err();
    const char *obj = object_of(e);
    CHECK(obj && !strcmp(obj, lib_path), "error '%s' is not static data of the library (%s)", e, obj ? obj : "-");
    return e;
}

static K str(const char *s) { return kpn((char *)s, (long long)strlen(s)); }

static void wait_for(long *counter, long n) {
    for (int i = 0; i < 500 && *counter < n; i++)
        loop(20);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: smoke <qhost.so> <libqmqtt.so> [tcp://host:port]\n");
        return 2;
    }
    H = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!H) {
        fprintf(stderr, "smoke: %s\n", dlerror());
        return 2;
    }
    ((void (*)(void))sym(H, "qhost_init"))();
    ((void (*)(handler_fn))sym(H, "qhost_set_handler"))(on_k);
    marker = sym(H, "qhost_err_marker");
    last_err = sym(H, "qhost_last_err");
    object_of = sym(H, "qhost_object_of");
    loop = sym(H, "qhost_loop");
    used = sym(H, "qhost_used");
    hstat = sym(H, "qhost_stat");
    nfds = sym(H, "qhost_nfds");
    lib_path = argv[2];
    L = dlopen(argv[2], RTLD_NOW);
    if (!L) {
        fprintf(stderr, "smoke: %s\n", dlerror());
        return 2;
    }
    fn4 pub = sym(L, "pub"), pubbatch = sym(L, "pubbatch");
    fn2 sub = sym(L, "sub");
    fn3 connX = sym(L, "connX");
    fn1 disconnect = sym(L, "disconnect"), isConnected = sym(L, "isConnected"), stats = sym(L, "stats"),
        init = sym(L, "init");

    K nil = ka(101), one = kj(1), no = kb(0), t = ks("smoke/t"), m = str("hello");
    K r = init(nil);
    CHECK(r == 0, "init returned %p", (void *)r);
    /* bad topic → 'topic type' through the host's krr (libe's krr would return null) */
    K bad = kj(42);
    CHECK(!strcmp(err_of(pub(bad, m, one, no)), "topic type"), "pub with a long topic");
    CHECK(!strcmp(err_of(pub(t, bad, one, no)), "payload type"), "pub with a long payload");
    K q7 = kj(7);
    CHECK(!strcmp(err_of(pub(t, m, q7, no)), "invalid qos"), "qos 7");
    CHECK(!strcmp(err_of(pub(t, m, one, no)), "not connected"), "pub before conn");
    r = isConnected(nil);
    CHECK(r && r->t == -KB && r->g == 0, "isConnected before conn");
    r0(r);

    if (argc > 3) {
        /* KX's conn wrapper: (enlist[`]!enlist(::)),opts */
        K keys = ktn(KS, 1), vals = ktn(0, 1);
        kS(keys)[0] = sn("", 0);
        kK(vals)[0] = ka(101);
        K opts = xD(keys, vals);
        K addr = ks(argv[3]), cid = ks("smoke");
        r = connX(addr, cid, opts);
        CHECK(r == 0, "connX %s: %s", argv[3], err_of(r));
        r = isConnected(nil);
        CHECK(r && r->t == -KB && r->g == 1, "isConnected after conn");
        r0(r);
        CHECK(nfds() == 1, "one event fd registered (%d)", nfds());
        K wild = ks("smoke/#");
        r = sub(wild, one);
        CHECK(r == 0, "sub: %s", err_of(r));
        loop(300);
        for (int qos = 0; qos <= 2; qos++) {
            K kq = kj(qos);
            r = pub(t, m, kq, no);
            CHECK(r && r->t == -KJ, "pub qos %d: %s", qos, err_of(r));
            if (r && r != marker())
                r0(r);
            r0(kq);
        }
        wait_for(&rcvd, 3);
        wait_for(&sent, 2);
        loop(200);
        CHECK(rcvd == 3, "3 messages received (%ld)", rcvd);
        CHECK(sent == 2, "msgsent for QoS 1 and 2 only (%ld)", sent);
        /* leak check: 1000 QoS 1 round trips */
        long long before = used();
        long r0cv = rcvd, s0 = sent;
        for (int i = 0; i < 1000; i++) {
            r = pub(t, m, one, no);
            if (r && r != marker())
                r0(r);
        }
        wait_for(&rcvd, r0cv + 1000);
        wait_for(&sent, s0 + 1000);
        loop(200);
        CHECK(rcvd == r0cv + 1000 && sent == s0 + 1000, "1000 round trips (%ld, %ld)", rcvd - r0cv, sent - s0);
        CHECK(used() == before, "libe used bytes balance (%lld)", used() - before);
        /* batch */
        K msgs = ktn(0, 100);
        for (int i = 0; i < 100; i++)
            kK(msgs)[i] = str("batch");
        r = pubbatch(t, msgs, one, no);
        CHECK(r && r->t == KJ && r->n == 100, "pubbatch: %s", err_of(r));
        if (r && r != marker())
            r0(r);
        r0(msgs);
        wait_for(&sent, s0 + 1100);
        CHECK(sent == s0 + 1100, "batch acknowledged (%ld)", sent - s0 - 1000);
        r = stats(nil);
        CHECK(r && r->t == XD, "stats is a dictionary");
        if (r && r != marker())
            r0(r);
        K zero = kj(0);
        r = disconnect(zero);
        CHECK(r == 0, "disconnect: %s", err_of(r));
        CHECK(nfds() == 0, "event fd deregistered");
        CHECK(!strcmp(err_of(disconnect(zero)), "No client is currently connected"), "second disconnect");
        r0(zero);
        r0(wild);
        r0(addr);
        r0(cid);
        r0(opts);
    }
    CHECK(bad_types == 0, "callback argument types");
    CHECK(hstat(1) == 0, "calls into q from another thread: %ld", hstat(1));
    r0(nil);
    r0(one);
    r0(no);
    r0(t);
    r0(m);
    r0(bad);
    r0(q7);
    printf("smoke: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
