/*
** floor.h: what the plain libev servers of the benchmarks (the floors:
** echo_floor.c, http_floor.c) share: a listener on loopback, and
** connections that write what they are given at once and hold the rest.
*/
#ifndef BENCH_FLOOR_H
#define BENCH_FLOOR_H

#include <stddef.h>

#include <ev.h>

/* The first member of a server's connection.  r reads (the server's
** callback), w writes what is held; r.data and w.data are the
** connection.  Allocated (zeroed, the server's size) and freed here. */
typedef struct floor_conn {
  ev_io r, w;
  char *held;             /* owned: what a write left, not yet written */
  size_t hlen;
} floor_conn;

typedef void floor_read(struct ev_loop *loop, ev_io *w, int revents);

/* Listens on 127.0.0.1:port (0: the kernel picks), says "NAME: listening
** on port N" on stderr, and runs the default loop for ever, each
** connection (non-blocking, TCP_NODELAY) a zeroed block of `size` bytes
** beginning with a floor_conn, read by on_read.  Returns 1 (after
** perror) only if it cannot listen. */
int floor_run(const char *name, int port, size_t size, floor_read *on_read);

/* Writes p[0..n) at once; what the socket does not take is held, and the
** connection stops reading until it is written.  Nothing may be held
** when it is called (a connection holding bytes reads nothing). */
void floor_send(struct ev_loop *loop, floor_conn *c, const char *p, size_t n);

/* Stops both watchers, closes the socket, frees c. */
void floor_close(struct ev_loop *loop, floor_conn *c);

#endif
