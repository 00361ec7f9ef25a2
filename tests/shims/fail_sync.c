/* Fault injection for the journal's flush (tests/tests/promises_journal_sync.rs), loaded
 * into the agent with LD_PRELOAD. Once the file named by PAM_TEST_FAIL_SYNC exists,
 * fdatasync and fsync of the journal's segment files (`*.seg`) fail with EIO, as on a
 * failing disk; every such failure appends a line to that file, so the test sees the
 * shim did intercept the agent's flushes. Other files and every call before the trigger
 * go to the C library. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int injected(int fd, const char *call)
{
    const char *trigger = getenv("PAM_TEST_FAIL_SYNC");
    char link[64], path[4096];
    ssize_t n;
    int saved = errno;

    if (trigger == NULL || access(trigger, F_OK) != 0) {
        errno = saved;
        return 0;
    }
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 4) {
        errno = saved;
        return 0;
    }
    path[n] = '\0';
    if (strcmp(path + n - 4, ".seg") != 0) {
        errno = saved;
        return 0;
    }
    int log = open(trigger, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (log >= 0) {
        dprintf(log, "%s %s EIO\n", call, path);
        close(log);
    }
    errno = EIO;
    return 1;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (injected(fd, "fdatasync"))
        return -1;
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (injected(fd, "fsync"))
        return -1;
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
