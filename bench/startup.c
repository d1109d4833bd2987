/*
** startup.c RUNS COMMAND [ARG...]: starts COMMAND RUNS times, one after
** the other (fork, exec, wait; its output to /dev/null), and prints the
** mean wall time and CPU time (user + system, from wait4) of one start, in
** ms: "wall-ms N cpu-ms N".  bench/startup.sh runs it in rounds.  No shell
** between: a shell's own start would be counted with every one.
*/
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include "measure.h"

int main(int argc, char **argv) {
  long runs, i;
  double t0, cpu = 0;
  if (argc < 3 || (runs = strtol(argv[1], NULL, 10)) <= 0) {
    fprintf(stderr, "usage: startup RUNS COMMAND [ARG...]\n");
    return 2;
  }
  t0 = bench_now_us();
  for (i = 0; i < runs; i++) {
    struct rusage ru;
    int status;
    pid_t pid = fork();
    if (pid < 0) { perror("startup: fork"); return 1; }
    if (pid == 0) {
      int null = open("/dev/null", O_WRONLY);
      if (null >= 0) { dup2(null, 1); dup2(null, 2); }
      execvp(argv[2], argv + 2);
      _exit(127);
    }
    if (wait4(pid, &status, 0, &ru) < 0) { perror("startup: wait4"); return 1; }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "startup: %s failed (status %d)\n", argv[2], status);
      return 1;
    }
    cpu += ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 +
           ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
  }
  printf("wall-ms %.3f cpu-ms %.3f\n", (bench_now_us() - t0) / 1e3 / runs, cpu / runs);
  return 0;
}
