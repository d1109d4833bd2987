/*
** http_floor.c: the floor for bench/http: a plain single-threaded libev
** server that answers every request with one fixed hello-world response,
** as lean as an HTTP server gets.  It parses nothing but the blank line
** that ends a head (wrk's GETs have no body), kept across reads.
**
**   http_floor [PORT [close]]    (default 5997; 0: the kernel picks)
**
** With `close`, a connection per request, as a server answers a client
** that sends "Connection: close": the answer says so, and the connection
** is closed once it is written (with nothing held, as an answer of this
** size on loopback always is; else when the client closes).
** Prints "http_floor: listening on port N" on stderr once it listens.
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "floor.h"

static const char RESPONSE[] =
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n";
#define RLEN (sizeof RESPONSE - 1)

typedef struct conn {
  floor_conn fc;          /* first: floor.c allocates and frees it */
  int seen;               /* how much of "\r\n\r\n" the last bytes read end with */
} conn;

static const char CLOSING[] =
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
  "Connection: close\r\n\r\nhello, world\n";

static int closing;       /* `close` given: one request a connection */
static char buf[65536];
static char *out;         /* the answers to one read's requests (grows, kept) */
static size_t outcap;

static void on_read(struct ev_loop *loop, ev_io *w, int revents) {
  static const char end[] = "\r\n\r\n";
  conn *c = w->data;
  ssize_t n = read(w->fd, buf, sizeof buf), i;
  size_t reqs = 0, k;
  (void)revents;
  if (n <= 0) {
    if (n < 0 && errno == EAGAIN) return;
    floor_close(loop, &c->fc);
    return;
  }
  for (i = 0; i < n; i++) {
    if (buf[i] == end[c->seen]) c->seen++;
    else c->seen = buf[i] == '\r';
    if (c->seen == 4) { reqs++; c->seen = 0; }
  }
  if (reqs == 0) return;
  if (closing) {
    floor_send(loop, &c->fc, CLOSING, sizeof CLOSING - 1);
    if (c->fc.hlen == 0) floor_close(loop, &c->fc);
    return;
  }
  if (reqs * RLEN > outcap) {
    outcap = reqs * RLEN;
    if ((out = realloc(out, outcap)) == NULL) { perror("http_floor"); exit(1); }
  }
  for (k = 0; k < reqs; k++) memcpy(out + k * RLEN, RESPONSE, RLEN);
  floor_send(loop, &c->fc, out, reqs * RLEN);
}

int main(int argc, char **argv) {
  closing = argc > 2 && strcmp(argv[2], "close") == 0;
  return floor_run("http_floor", argc > 1 ? atoi(argv[1]) : 5997, sizeof(conn), on_read);
}
