/* LD_PRELOADed into an aarch64 process under qemu-user by benches/qemu-instructions: hides the ARMv8 crypto
 * extensions (AES, PMULL, SHA1, SHA2) from getauxval(AT_HWCAP), so ring, the Rust standard library and the
 * client's cipher order take the paths they take on a Cortex-A53/A72 without them (Raspberry Pi 3/4): qemu's
 * aarch64 CPU models all have the extensions and qemu 7.2 cannot turn them off. */
#include <sys/auxv.h> /* AT_HWCAP, HWCAP_AES, ... (the aarch64 cross toolchain's) */

extern unsigned long __getauxval(unsigned long type);

unsigned long getauxval(unsigned long type) {
    unsigned long v = __getauxval(type);
    return type == AT_HWCAP ? v & ~(unsigned long)(HWCAP_AES | HWCAP_PMULL | HWCAP_SHA1 | HWCAP_SHA2) : v;
}
