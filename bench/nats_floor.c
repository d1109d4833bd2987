/*
** nats_floor.c: the floor for the cluster's figures: plain libnats, one
** publishing connection and one subscribing connection through a
** nats-server, in one process (bench/nats_floor.sh starts the server).
** The cluster's messages between two nodes are compared with this
** (issue 13: at least 0.5 of its rate).
**
**   nats_floor URL [MESSAGES [SIZE [SAMPLES]]]
**
** Prints
**   messages-per-second: N    MESSAGES messages (default 200000) of SIZE
**                             bytes (default 64) published as fast as the
**                             publisher goes, from the first publish to
**                             the last arrival at the subscriber;
**   cpu-us-per-message: C     the process's CPU time (user + system,
**                             every thread: publisher, libnats's and the
**                             subscriber's) over that window, per
**                             message: the floor beside the nodes' own
**                             (bench/cluster_node.lua);
**   latency-us-p50: X, -p99, -p999
**                             one way, publisher to subscriber, SAMPLES
**                             times (default 20000) with one message in
**                             flight: the send time travels in the
**                             payload, read on the same clock.  From a
**                             third connection that writes each message
**                             at once (natsOptions_SetSendAsap): libnats
**                             otherwise leaves writing to a flusher
**                             thread that waits for more, which costs a
**                             lone message about a millisecond;
**   dropped: N                what the subscriber's connection dropped
**                             (0: the subscription's pending limits are
**                             off, so a slow subscriber is not cut).
**
** libnats calls the subscriber back on its own thread: the counts and
** the samples are handed over under a mutex.
*/
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* The process's CPU time, every thread's, in µs. */
static double cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* What the subscriber's thread tells the main one. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  long got;               /* messages arrived on the rate subject */
  double last;            /* when the last of them arrived */
  double *samples;        /* latency samples, µs: room for cap */
  long nsamples, cap;
  int closed;             /* the main thread reads the samples: keep off */
} S = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, 0, 0, 0 };

static void on_rate(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *ud) {
  (void)nc; (void)sub; (void)ud;
  natsMsg_Destroy(msg);
  pthread_mutex_lock(&S.lock);
  S.got++;
  S.last = now_us();
  pthread_cond_signal(&S.cond);
  pthread_mutex_unlock(&S.lock);
}

static void on_latency(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *ud) {
  double sent, t = now_us();
  (void)nc; (void)sub; (void)ud;
  memcpy(&sent, natsMsg_GetData(msg), sizeof sent);
  natsMsg_Destroy(msg);
  pthread_mutex_lock(&S.lock);
  if (!S.closed && S.nsamples < S.cap) S.samples[S.nsamples++] = t - sent;
  pthread_cond_signal(&S.cond);
  pthread_mutex_unlock(&S.lock);
}

static void check(natsStatus s, const char *what) {
  if (s == NATS_OK) return;
  fprintf(stderr, "nats_floor: %s: %s\n", what, natsStatus_GetText(s));
  exit(1);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double pct(const double *v, long n, double p) {
  long i = (long)(p * (double)(n - 1) + 0.5);
  return n > 0 ? v[i] : 0;
}

int main(int argc, char **argv) {
  const char *url = argc > 1 ? argv[1] : NULL;
  long messages = argc > 2 ? atol(argv[2]) : 200000;
  size_t size = argc > 3 ? (size_t)atol(argv[3]) : 64;
  long samples = argc > 4 ? atol(argv[4]) : 20000, i;
  natsConnection *pub = NULL, *subc = NULL, *asap = NULL;
  natsOptions *opts = NULL;
  natsSubscription *rate = NULL, *lat = NULL;
  int64_t dropped = 0;
  char *payload;
  double t0, elapsed, cpu0, cpu;
  long got, have;

  if (url == NULL || messages < 1 || samples < 1 || size < sizeof(double) || size > 1 << 20) {
    fputs("usage: nats_floor URL [MESSAGES [SIZE (8 to 1048576) [SAMPLES]]]\n", stderr);
    return 2;
  }
  payload = calloc(1, size);
  S.samples = malloc((size_t)samples * sizeof *S.samples);
  S.cap = samples;
  if (payload == NULL || S.samples == NULL) { fputs("nats_floor: out of memory\n", stderr); return 1; }
  check(natsConnection_ConnectTo(&pub, url), "connect (publisher)");
  check(natsConnection_ConnectTo(&subc, url), "connect (subscriber)");
  check(natsOptions_Create(&opts), "options");
  check(natsOptions_SetURL(opts, url), "options");
  check(natsOptions_SetSendAsap(opts, true), "options");
  check(natsConnection_Connect(&asap, opts), "connect (publisher, at once)");
  check(natsConnection_Subscribe(&rate, subc, "floor.rate", on_rate, NULL), "subscribe");
  check(natsConnection_Subscribe(&lat, subc, "floor.latency", on_latency, NULL), "subscribe");
  check(natsSubscription_SetPendingLimits(rate, -1, -1), "pending limits");
  check(natsSubscription_SetPendingLimits(lat, -1, -1), "pending limits");
  /* The subscriptions are known to the server once a round trip on the
  ** subscriber's connection has gone through it. */
  check(natsConnection_Flush(subc), "flush (subscriber)");

  /* Rate: everything at once; the last arrival ends it. */
  t0 = now_us();
  cpu0 = cpu_us();
  for (i = 0; i < messages; i++)
    check(natsConnection_Publish(pub, "floor.rate", payload, (int)size), "publish");
  check(natsConnection_Flush(pub), "flush (publisher)");
  pthread_mutex_lock(&S.lock);
  while (S.got < messages) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    if (pthread_cond_timedwait(&S.cond, &S.lock, &dl) == ETIMEDOUT) break;
  }
  elapsed = S.last - t0;
  got = S.got;
  pthread_mutex_unlock(&S.lock);
  cpu = cpu_us() - cpu0;
  natsSubscription_GetDropped(rate, &dropped);
  if (got < messages)
    fprintf(stderr, "nats_floor: %ld of %ld messages arrived within 30 s\n", got, messages);
  printf("messages-per-second: %.0f  (%ld messages of %zu bytes, publisher to subscriber)\n",
         elapsed > 0 ? (double)got * 1e6 / elapsed : 0.0, got, size);
  printf("cpu-us-per-message: %.2f  (publisher and subscriber, all threads)\n",
         got > 0 ? cpu / (double)got : 0.0);

  /* Latency: one message in flight, its send time in the payload. */
  for (i = 0; i < samples; i++) {
    double t = now_us();
    memcpy(payload, &t, sizeof t);
    check(natsConnection_Publish(asap, "floor.latency", payload, (int)size), "publish");
    pthread_mutex_lock(&S.lock);
    while (S.nsamples <= i) {
      struct timespec dl;
      clock_gettime(CLOCK_REALTIME, &dl);
      dl.tv_sec += 10;
      if (pthread_cond_timedwait(&S.cond, &S.lock, &dl) == ETIMEDOUT) break;
    }
    have = S.nsamples;
    pthread_mutex_unlock(&S.lock);
    if (have <= i) {
      fprintf(stderr, "nats_floor: a latency sample never arrived\n");
      break;
    }
  }

  /* A sample late past its wait may still come: from here the callbacks
  ** leave the samples alone. */
  pthread_mutex_lock(&S.lock);
  S.closed = 1;
  pthread_mutex_unlock(&S.lock);
  natsSubscription_Destroy(rate);
  natsSubscription_Destroy(lat);
  qsort(S.samples, (size_t)S.nsamples, sizeof *S.samples, cmp);
  printf("latency-us-p50: %.1f\n", pct(S.samples, S.nsamples, 0.50));
  printf("latency-us-p99: %.1f\n", pct(S.samples, S.nsamples, 0.99));
  printf("latency-us-p999: %.1f  (one way, one message in flight, %ld samples)\n",
         pct(S.samples, S.nsamples, 0.999), S.nsamples);
  printf("dropped: %lld\n", (long long)dropped);
  natsConnection_Destroy(pub);
  natsConnection_Destroy(asap);
  natsConnection_Destroy(subc);
  natsOptions_Destroy(opts);
  nats_Close();
  free(payload);
  free(S.samples);
  return got == messages && have == samples ? 0 : 1;
}
