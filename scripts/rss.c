/* Runs a program and prints its own peak resident memory to stderr as "maxrss_kib=N".
 *
 * Used by scripts/bench.py instead of measuring from Python: a child forked by Python
 * starts as a copy of the interpreter (about 19 MiB resident) before it execs, and the
 * kernel's peak for the child includes that copy. This program is small, so what it adds
 * before the exec is well under 1 MiB. stdin, stdout and the exit status pass through.
 */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: rss PROGRAM [ARG...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        execv(argv[1], argv + 1);
        perror("execv");
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 1;
    }
    fprintf(stderr, "maxrss_kib=%ld\n", ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
