/* A qemu TCG plugin that counts the guest instructions a process executes (all its threads) and writes the
 * total to the file given as out=PATH when the process exits. Used by benches/qemu-instructions.
 *
 * Debian's qemu-user supports -plugin but ships no plugins, and its qemu-plugin.h is not packaged: the few
 * API calls used here are declared below as qemu's documented plugin API (version 1: Debian 12's qemu 7.2).
 * Each translated block adds its instruction count when it starts executing (an atomic add: linux-user
 * runs guest threads in parallel); blocks end at branches and system calls, so the count is exact unless
 * a block faults part-way (benches/qemu-instructions checks it on a loop of known length). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
/* flags 0: QEMU_PLUGIN_CB_NO_REGS */
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, void (*cb)(unsigned int, void *),
                                          int flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t executed;
static char out_path[4096];

static void block_runs(unsigned int vcpu, void *insns) {
    (void)vcpu;
    __atomic_fetch_add(&executed, (uint64_t)(uintptr_t)insns, __ATOMIC_RELAXED);
}

static void block_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_runs, 0, (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void process_exits(qemu_plugin_id_t id, void *unused) {
    (void)id;
    (void)unused;
    FILE *f = fopen(out_path, "w");
    if (f) {
        fprintf(f, "%llu\n", (unsigned long long)__atomic_load_n(&executed, __ATOMIC_RELAXED));
        fclose(f);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        }
    }
    if (!out_path[0]) {
        fprintf(stderr, "count-insns: give the output file: -plugin count-insns.so,out=PATH\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, block_translated);
    qemu_plugin_register_atexit_cb(id, process_exits, NULL);
    return 0;
}
