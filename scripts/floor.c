/* The floor probe of scripts/bench.py: what one locked state update costs with nothing
 * but libc. It does what a formwarden request does to a rate-limit window (flock the
 * key's lock file with 25 ms polling up to 300 ms, read the state, write a temp file,
 * rename it over the state; fsync when asked), so the benchmark can compare formwarden's
 * lock timeouts with those of a dependency-free program in the same run.
 *
 * usage: floor DIR [fsync]    exit 0 done, 3 lock timeout, 1 error */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    if (argc < 2) return 1;
    int sync = argc > 2;
    char lock[4096], state[4096], tmp[4096];
    snprintf(lock, sizeof lock, "%s/floor.lock", argv[1]);
    snprintf(state, sizeof state, "%s/floor.toml", argv[1]);
    snprintf(tmp, sizeof tmp, "%s/.tmp-floor-%d", argv[1], (int)getpid());
    int fd = open(lock, O_RDWR | O_CREAT, 0644);
    if (fd < 0) return 1;
    long deadline = now_ms() + 300;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK || now_ms() >= deadline) return 3;
        usleep(25000);
    }
    char buf[256] = {0};
    long count = 0;
    int s = open(state, O_RDONLY);
    if (s >= 0) {
        ssize_t n = read(s, buf, sizeof buf - 1);
        if (n > 0) sscanf(buf, "count = %ld", &count);
        close(s);
    }
    int t = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (t < 0) return 1;
    int len = snprintf(buf, sizeof buf, "count = %ld\n", count + 1);
    if (write(t, buf, len) != len) return 1;
    if (sync) fsync(t);
    close(t);
    if (rename(tmp, state) != 0) return 1;
    if (sync) {
        int d = open(argv[1], O_RDONLY);
        if (d >= 0) { fsync(d); close(d); }
    }
    close(fd);
    return 0;
}
