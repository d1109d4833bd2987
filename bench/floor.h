/*
** floor.h: what the plain libev servers of the benchmarks (the floors:
** echo_floor.c, http_floor.c) share: a listener on loopback whose every
** connection, non-blocking and with TCP_NODELAY, is handed to the server.
*/
#ifndef BENCH_FLOOR_H
#define BENCH_FLOOR_H

#include <ev.h>

/* Called for each connection accepted; the server owns fd from then on. */
typedef void floor_accepted(struct ev_loop *loop, int fd);

/* Listens on 127.0.0.1:port (0: the kernel picks), says "NAME: listening
** on port N" on stderr, and runs the default loop for ever; returns 1
** (after perror) only if it cannot listen. */
int floor_run(const char *name, int port, floor_accepted *accepted);

#endif
