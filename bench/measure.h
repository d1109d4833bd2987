/*
** measure.h: what the load generators (loadgen.c, chatgen.c) share: a
** monotonic clock, latency samples and their percentiles, and the CPU time
** of another process.
*/
#ifndef BENCH_MEASURE_H
#define BENCH_MEASURE_H

/* Now, in µs, on the monotonic clock. */
double bench_now_us(void);

/* Latency samples (µs), kept whole for exact percentiles (a few million
** per run at most): `v` is owned by the set, grown by doubling, and kept
** until exit.  A zeroed set is empty. */
typedef struct bench_samples {
  float *v;
  size_t n, cap;
} bench_samples;

void bench_samples_add(bench_samples *s, double us);

/* Prints "PREFIXlatency-us-p50: N", p99 and p999 of the set's samples
** (nothing without any), sorting them. */
void bench_samples_print(bench_samples *s, const char *prefix);

/* bench_samples_add and bench_samples_print on one set of measure.c's,
** for the programs that measure one server. */
void bench_record(double us);
void bench_print_percentiles(void);

/* CPU time (user + system) process pid has used, in seconds; -1 if it is
** gone.  With user not NULL, *user is the user part of it. */
double bench_cpu_seconds(long pid, double *user);

#endif
