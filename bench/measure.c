/*
** measure.c: see measure.h.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "measure.h"

/* bench_record's samples. */
static bench_samples one;

double bench_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

void bench_samples_add(bench_samples *s, double us) {
  if (s->n == s->cap) {
    size_t n = s->cap ? 2 * s->cap : 65536;
    float *p = realloc(s->v, n * sizeof *p);
    if (p == NULL) return;       /* the rates still count; percentiles undercount */
    s->v = p;
    s->cap = n;
  }
  s->v[s->n++] = (float)us;
}

static int by_value(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

void bench_samples_print(bench_samples *s, const char *prefix) {
  static const struct { const char *name; double q; } ps[] = {
    {"p50", 0.50}, {"p99", 0.99}, {"p999", 0.999}};
  size_t i;
  if (s->n == 0) return;
  qsort(s->v, s->n, sizeof *s->v, by_value);
  for (i = 0; i < sizeof ps / sizeof ps[0]; i++) {
    size_t k = (size_t)(ps[i].q * (double)(s->n - 1) + 0.5);
    printf("%slatency-us-%s: %.0f\n", prefix, ps[i].name, (double)s->v[k]);
  }
}

void bench_record(double us) { bench_samples_add(&one, us); }
void bench_print_percentiles(void) { bench_samples_print(&one, ""); }

/* The fields of /proc/PID/stat are read after the command name, which
** may hold spaces and parentheses: after its last ')'. */
double bench_cpu_seconds(long pid, double *user) {
  char path[64], buf[1024], *p;
  unsigned long utime, stime;
  size_t n;
  FILE *f;
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  if ((f = fopen(path, "r")) == NULL) return -1;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  if ((p = strrchr(buf, ')')) == NULL ||
      sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
             &utime, &stime) != 2)
    return -1;
  if (user) *user = (double)utime / (double)sysconf(_SC_CLK_TCK);
  return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}
