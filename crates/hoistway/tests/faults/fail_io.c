/*
 * Injected I/O faults for the test suite, loaded into `hoistway serve` with LD_PRELOAD.
 *
 * While the file named by FAIL_IO_FSYNC_TRIGGER exists, fdatasync and fsync of log segments
 * (`*.seg`) fail with EIO; while the file named by FAIL_IO_READ_TRIGGER exists, positioned reads
 * of log segments fail with EIO. Everything else passes through to the C library. The test
 * creates and removes the trigger files to switch a fault on and off while the server runs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int armed(const char *variable) {
    const char *trigger = getenv(variable);
    return trigger != NULL && access(trigger, F_OK) == 0;
}

static int has_suffix(int fd, const char *suffix) {
    char link[64];
    char target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    size_t len = strlen(suffix);
    if (n < 0 || (size_t)n < len) {
        return 0;
    }
    target[n] = '\0';
    return strcmp(target + n - len, suffix) == 0;
}

static int fault_on(const char *variable, int fd, const char *suffix) {
    if (armed(variable) && has_suffix(fd, suffix)) {
        errno = EIO;
        return 1;
    }
    return 0;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    return fault_on("FAIL_IO_FSYNC_TRIGGER", fd, ".seg") ? -1 : real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    return fault_on("FAIL_IO_FSYNC_TRIGGER", fd, ".seg") ? -1 : real(fd);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (real == NULL) {
        real = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    }
    if (fault_on("FAIL_IO_READ_TRIGGER", fd, ".seg") ||
        fault_on("FAIL_IO_PARQUET_READ_TRIGGER", fd, ".parquet")) {
        return -1;
    }
    return real(fd, buf, count, offset);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    return pread64(fd, buf, count, offset);
}
