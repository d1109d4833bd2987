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

/* The latency samples (µs), grown by doubling. */
static float *lat;
static size_t nlat, caplat;

double bench_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

void bench_record(double us) {
  if (nlat == caplat) {
    size_t n = caplat ? 2 * caplat : 65536;
    float *p = realloc(lat, n * sizeof *p);
    if (p == NULL) return;       /* the rates still count; percentiles undercount */
    lat = p;
    caplat = n;
  }
  lat[nlat++] = (float)us;
}

static int by_value(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

void bench_print_percentiles(void) {
  static const struct { const char *name; double q; } ps[] = {
    {"p50", 0.50}, {"p99", 0.99}, {"p999", 0.999}};
  size_t i;
  if (nlat == 0) return;
  qsort(lat, nlat, sizeof *lat, by_value);
  for (i = 0; i < sizeof ps / sizeof ps[0]; i++) {
    size_t k = (size_t)(ps[i].q * (double)(nlat - 1) + 0.5);
    printf("latency-us-%s: %.0f\n", ps[i].name, (double)lat[k]);
  }
}

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
