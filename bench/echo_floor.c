/*
** echo_floor.c: the floor for bench/echo: a plain single-threaded libev
** TCP echo server, as lean as such a server gets.
**
**   echo_floor [PORT]    (default 5998; 0: the kernel picks)
**
** Prints "echo_floor: listening on port N" on stderr once it listens.
*/
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "floor.h"

static char buf[65536];

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
  ssize_t n = read(w->fd, buf, sizeof buf);
  (void)revents;
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    floor_close(loop, w->data);
    return;
  }
  floor_send(loop, w->data, buf, (size_t)n);
}

int main(int argc, char **argv) {
  return floor_run("echo_floor", argc > 1 ? atoi(argv[1]) : 5998, sizeof(floor_conn), on_read);
}
