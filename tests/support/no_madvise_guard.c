/* LD_PRELOAD shim for tests/stacks.rs: simulates a kernel older than Linux 6.13, where
 * madvise(MADV_GUARD_INSTALL) does not exist and fails with EINVAL. Every other madvise call
 * goes to libc's. Built by the test itself with the system C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>

#define MADV_GUARD_INSTALL 102

int madvise(void *addr, size_t len, int advice) {
    static int (*real)(void *, size_t, int);
    if (advice == MADV_GUARD_INSTALL) {
        errno = EINVAL;
        return -1;
    }
    if (!real) {
        real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
    }
    return real(addr, len, advice);
}
