/*
** floor.c: the listener of the benchmarks' plain libev servers (floor.h).
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "floor.h"

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
  floor_accepted *accepted = (floor_accepted *)w->data;
  (void)revents;
  for (;;) {
    int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK), one = 1;
    if (fd < 0) return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    accepted(loop, fd);
  }
}

int floor_run(const char *name, int port, floor_accepted *accepted) {
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  struct ev_loop *loop = ev_default_loop(0);
  ev_io acc;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0 ||
      getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
    perror(name);
    return 1;
  }
  fprintf(stderr, "%s: listening on port %d\n", name, ntohs(a.sin_port));
  ev_io_init(&acc, on_accept, fd, EV_READ);
  acc.data = (void *)accepted;
  ev_io_start(loop, &acc);
  ev_run(loop, 0);
  return 0;
}
