/*
** examples/embed/host.c: a C program that embeds market.
**
** It runs its own libev loop with watchers of its own (stdin, SIGINT and
** SIGTERM), loads a Lua actor (actor.lua), and talks to it through a
** native C process: each line read from stdin becomes a message
** request(id, line) for the actor, and the actor's reply(id, text) comes
** back to the native process, which prints it.  At end of input (or on a
** signal) the native process quits once every request is answered; the
** actor sees it go and quits too; the program frees everything and exits.
**
**   cc host.c $(pkg-config --cflags --libs market) -o embed
**   printf 'hello\nworld\n' | ./embed actor.lua
**
** docs/embedding.md walks through this file.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <market.h>

typedef struct app {
  struct ev_loop *loop;
  mk_host *host;
  ev_io input;                 /* stdin: started when the actor listens */
  ev_signal sigint, sigterm;
  mk_pid bridge;               /* the native process, 0 once it is gone */
  int64_t sent, answered;
  int eof;
  char buf[4096];
  size_t len;
} app;

/* ---- the native process ------------------------------------------------- */

/* request(_, _) and reply(_, _): the topics of the conversation. */
static mk_term *pattern(const char *label) {
  return mk_record(label, 2, mk_wild(), mk_wild());
}

static void bridge_boot(mk_proc *self, void *ud) {
  mk_term *requests = pattern("request"), *replies = pattern("reply");
  /* Publishing requests tells the actor a client exists (its presence);
  ** subscribing to replies is how the answers come back. */
  mk_add_publisher(self, "out", requests);
  mk_add_subscriber(self, "in", replies);
  mk_unref(requests);
  mk_unref(replies);
}

static void bridge_presence(mk_proc *self, void *ud, const mk_role *peer, const char *endpoint) {
  app *a = ud;
  if (strcmp(endpoint, "out") == 0 && !a->eof) {
    /* Someone subscribes to our requests: start reading input. */
    printf("host: the actor is listening\n");
    ev_io_start(a->loop, &a->input);
  }
}

static void bridge_absence(mk_proc *self, void *ud, const mk_role *peer, mk_term *reason,
                           const char *endpoint) {
  app *a = ud;
  if (strcmp(endpoint, "out") == 0) {
    printf("host: the actor left\n");
    ev_io_stop(a->loop, &a->input);
    mk_quit(self, 0, NULL);
  }
}

static void bridge_message(mk_proc *self, void *ud, mk_term *message, const char *endpoint) {
  app *a = ud;
  int64_t id;
  const char *text = mk_tostring(mk_field(message, 1), NULL);
  if (!mk_is_record(message, "reply", 2) || !mk_tointeger(mk_field(message, 0), &id) || !text)
    return;
  printf("host: reply %lld: %s\n", (long long)id, text);
  a->answered++;
  if (a->eof && a->answered == a->sent) mk_quit(self, 0, NULL);   /* all done */
}

static void bridge_exit(mk_proc *self, void *ud) {
  app *a = ud;
  a->bridge = 0;
}

static const mk_native bridge = {
  .on_boot = bridge_boot,
  .on_presence = bridge_presence,
  .on_absence = bridge_absence,
  .on_message = bridge_message,
  .on_exit = bridge_exit,
};

/* ---- the host's own watchers -------------------------------------------- */

/* No more input: stop reading; the bridge quits when every request is
** answered (now, if none is outstanding). */
static void end_of_input(app *a) {
  a->eof = 1;
  ev_io_stop(a->loop, &a->input);
  if (a->bridge && a->answered == a->sent) mk_host_kill(a->host, a->bridge, NULL);
}

static void send_line(app *a, const char *line, size_t len) {
  mk_term *msg = mk_record("request", 2, mk_int(++a->sent), mk_str(line, len));
  if (msg == NULL) { fprintf(stderr, "host: out of memory\n"); return; }
  mk_host_send(a->host, msg);     /* borrowed: we still own msg */
  mk_unref(msg);
}

static void on_input(struct ev_loop *loop, ev_io *w, int revents) {
  app *a = w->data;
  ssize_t n = read(w->fd, a->buf + a->len, sizeof a->buf - a->len);
  char *nl;
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    if (a->len > 0) send_line(a, a->buf, a->len);   /* a last line without '\n' */
    a->len = 0;
    end_of_input(a);
    return;
  }
  a->len += (size_t)n;
  while ((nl = memchr(a->buf, '\n', a->len)) != NULL) {
    size_t k = (size_t)(nl - a->buf);
    send_line(a, a->buf, k);
    memmove(a->buf, nl + 1, a->len - k - 1);
    a->len -= k + 1;
  }
  if (a->len == sizeof a->buf) { send_line(a, a->buf, a->len); a->len = 0; }
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  app *a = w->data;
  printf("host: signal %d\n", w->signum);
  a->eof = 1;
  ev_io_stop(loop, &a->input);
  if (a->bridge) mk_host_kill(a->host, a->bridge, NULL);
}

/* The signal watchers must not keep the loop running by themselves. */
static void start_signal(app *a, ev_signal *w, int signum) {
  ev_signal_init(w, on_signal, signum);
  w->data = a;
  ev_signal_start(a->loop, w);
  ev_unref(a->loop);
}

static void stop_signal(app *a, ev_signal *w) {
  ev_ref(a->loop);
  ev_signal_stop(a->loop, w);
}

/* ---- main --------------------------------------------------------------- */

static void on_failure(mk_host *h, mk_pid pid, const char *name, const char *traceback,
                       void *ud) {
  fprintf(stderr, "host: process %llu (%s) failed:\n%s\n", (unsigned long long)pid,
          name ? name : "?", traceback);
}

int main(int argc, char **argv) {
  const char *script = argc > 1 ? argv[1] : "actor.lua";
  const char *prefix[1] = { argc > 2 ? argv[2] : "echo" };
  mk_error err;
  app a;
  int status = 0;

  setvbuf(stdout, NULL, _IOLBF, 0);   /* Lua's print shares stdout with us */
  memset(&a, 0, sizeof a);
  a.loop = ev_default_loop(0);
  if (a.loop == NULL) { fprintf(stderr, "host: no event loop\n"); return 1; }

  /* The host uses our loop; we keep owning it. */
  a.host = mk_host_new(a.loop, &err);
  if (a.host == NULL) {
    fprintf(stderr, "host: %s (%s)\n", err.message, mk_status_name(err.code));
    return 1;
  }
  mk_host_on_failure(a.host, on_failure, &a);

  ev_io_init(&a.input, on_input, STDIN_FILENO, EV_READ);
  a.input.data = &a;
  start_signal(&a, &a.sigint, SIGINT);
  start_signal(&a, &a.sigterm, SIGTERM);

  /* The native process first, then the actor: both run when the loop
  ** turns. */
  a.bridge = mk_host_spawn_native(a.host, &bridge, &a, "bridge");
  if (a.bridge == 0 || mk_host_spawn_file(a.host, script, 1, prefix) == 0) {
    fprintf(stderr, "host: %s\n", mk_host_error(a.host));
    status = 1;
  } else {
    /* Our loop: the ground VM runs its events before each poll. */
    ev_run(a.loop, 0);
    /* The loop ends when our watchers are done; let the VM finish what
    ** that started (the last replies, the actor's goodbye). */
    if (mk_host_run(a.host) == MK_EFAILED) status = 1;
  }

  stop_signal(&a, &a.sigint);
  stop_signal(&a, &a.sigterm);
  mk_host_free(a.host);          /* ends whatever is left; frees it all */
  ev_loop_destroy(a.loop);
  printf("host: done\n");
  return status;
}
