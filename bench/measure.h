/*
** measure.h: what the load generators (loadgen.c, chatgen.c) share: a
** monotonic clock, latency samples and their percentiles, and the CPU time
** of another process.
*/
#ifndef BENCH_MEASURE_H
#define BENCH_MEASURE_H

/* Now, in µs, on the monotonic clock. */
double bench_now_us(void);

/* Keeps one latency sample (µs).  The samples are kept whole, for exact
** percentiles (a few million per run at most), in an array owned by
** measure.c and kept until exit. */
void bench_record(double us);

/* Prints "latency-us-p50: N", p99 and p999 of the samples (nothing
** without any), sorting them. */
void bench_print_percentiles(void);

/* CPU time (user + system) process pid has used, in seconds; -1 if it is
** gone.  With user not NULL, *user is the user part of it. */
double bench_cpu_seconds(long pid, double *user);

#endif
