/*
** main.c: the `market` interpreter.  Runs a script as the boot process of
** a fresh ground VM, with the timer, tcp and udp drivers already running.
**
** A client of market.h like any embedding program: it uses nothing else
** (docs/embedding.md).
*/
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <ev.h>

#include "market.h"
#include "mkl.h"
#include "pool.h"

/* All of standard input, NUL-terminated, malloc'd, its length in *len;
** NULL with errno set on a read error or out of memory (the script `-`). */
static char *read_stdin(size_t *len) {
  size_t n = 0, cap = 4096;
  char *buf = malloc(cap), *more;
  while (buf != NULL) {
    size_t got = fread(buf + n, 1, cap - n - 1, stdin);
    n += got;
    if (got == 0) {
      if (ferror(stdin)) break;
      buf[n] = 0;
      *len = n;
      return buf;
    }
    if (n + 1 == cap) {
      if ((more = realloc(buf, cap * 2)) == NULL) break;
      buf = more;
      cap *= 2;
    }
  }
  free(buf);
  return NULL;
}

/* Where the chunk starts in a script read from standard input, as lua(1)
** has it (lauxlib.c, luaL_loadfilex, which a file given by name goes
** through): past a UTF-8 BOM, and past a first line starting with '#' (a
** Unix exec line, "#!/usr/bin/env market"), but not its newline, which
** stands for the line so that the next one is still line 2.  A
** precompiled chunk after that line loses the newline too, as it does in
** a file given by name: it must start with its signature (ESC,
** LUA_SIGNATURE's first byte) and has no lines to count.  (lua5.4 - of
** Lua 5.4.4 keeps it, and fails there.)  *len: the length from there. */
static const char *script_start(const char *s, size_t *len) {
  const char *end = s + *len, *nl;
  if (*len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3;
  if (s < end && *s == '#') {
    nl = memchr(s, '\n', (size_t)(end - s));
    s = nl ? nl : end;
    if (end - s > 1 && s[1] == '\033') s++;
  }
  *len = (size_t)(end - s);
  return s;
}

/* What `market inspect` does: in the whole help, and alone for
** `market inspect --help`. */
#define INSPECT_HELP \
  "market inspect [HOST:]PORT prints the processes of a program run with\n" \
  "--inspect, one line each, like ps (exit 1 if it cannot be reached or\n" \
  "does not answer within 5 s, 2 if the address is bad).  A script named\n" \
  "inspect runs as ./inspect.\n"

static const char usage[] =
  "usage: market [options] [script [args...]]\n"
  "       market inspect [HOST:]PORT\n"
  "\n"
  "Runs an actor script (Lua 5.4) as the boot process of a fresh ground VM\n"
  "with the timer, tcp and udp drivers already running, and exits when no\n"
  "process has anything left to do.  A script named - is read from\n"
  "standard input, as lua(1) reads it.  Without a script, standard input\n"
  "is the script, or at a terminal market is interactive (-i).\n"
  "\n"
  "options:\n"
  "  -e CODE        run CODE as the boot process (instead of a script)\n"
  "  -i             interactive, after starting the script if one is given:\n"
  "                 each chunk typed runs as a process of its own and what\n"
  "                 it returns is printed; Ctrl-C stops the chunk running,\n"
  "                 twice at the prompt or Ctrl-D stops the program\n"
  "  --drain MS     on SIGINT or SIGTERM, give open work MS milliseconds to\n"
  "                 finish before everything is closed (default 5000; 0: none)\n"
  "  --trace        print every event and action to stderr, one line each,\n"
  "                 starting with the time (UTC); the options below choose\n"
  "                 which lines (each implies --trace; a repeated --trace-pid,\n"
  "                 -name, -vm or -kind adds values, any of which may match;\n"
  "                 --trace-topic is given once; different options must all\n"
  "                 match):\n"
  "  --trace-pid N[,N...]     lines about these pids (in any VM)\n"
  "  --trace-name GLOB        about processes whose debug name matches GLOB\n"
  "  --trace-vm GLOB          about processes in VMs whose path matches GLOB\n"
  "                           (ground, ground/2, ...)\n"
  "  --trace-kind K[,K...]    lines of these kinds: spawn quit add delete send\n"
  "                           feedback at_meta_level presence absence message\n"
  "                           spawned resume meta deleted\n"
  "  --trace-topic TERM       lines whose message (or else topic) unifies with\n"
  "                           the term TERM, written as traces show terms:\n"
  "                           'chat(_, \"hi\")', '[\"hello\", _]'\n"
  "  --trace-format text|json one JSON object a line with json\n"
  "  --trace-file PATH        write the lines to PATH (created or truncated)\n"
  "  --inspect [HOST:]PORT\n"
  "                 serve the live inspector (a page, /events, /api/...)\n"
  "                 on HOST (default 127.0.0.1: loopback only) and PORT (0:\n"
  "                 one the kernel picks); says \"market: inspector on URL\"\n"
  "                 on stderr; the program then runs until it is stopped\n"
  "  --quiet        print no crash reports (the boot process's failure is\n"
  "                 still printed: it is the program's)\n"
  "  --strict       exit 3 at the end if any process failed\n"
  "  --log-level LEVEL\n"
  "                 log lines up to LEVEL: error, warn, info or debug\n"
  "                 (default warn, or what MARKET_LOG says)\n"
  "  --no-drivers   do not start the timer, tcp and udp drivers\n"
  "  --cluster nats://HOST:PORT[/NAME], --cluster tls://HOST:PORT[/NAME]\n"
  "                 join the cluster NAME (default \"market\") through the NATS\n"
  "                 server at HOST:PORT: topics wrapped in cluster.topic(...)\n"
  "                 (require \"market.cluster\") are shared with the other\n"
  "                 nodes (docs/cluster.md); the program then runs until\n"
  "                 stopped (exit status 1 if the driver cannot connect);\n"
  "                 tls:// speaks TLS to the server, trusting the system's\n"
  "                 CA certificates (or SSL_CERT_FILE's), its certificate\n"
  "                 checked for HOST (a name or an address)\n"
  "  --node NAME    this node's name in the cluster (default HOST-PID;\n"
  "                 NAME-i for worker i under --workers)\n"
  "  --workers N    run N copies of the program as N processes (1 to 1024),\n"
  "                 each told its number (market.worker, MARKET_WORKER=i/N),\n"
  "                 their TCP and UDP listeners sharing ports (SO_REUSEPORT);\n"
  "                 this process waits for them, passes SIGINT and SIGTERM\n"
  "                 on, reports a worker that fails, and exits with the\n"
  "                 first failed worker's status (docs/workers.md)\n"
  "  --max-term-depth N, --max-term-size N\n"
  "                 the deepest and the largest term a process may build\n"
  "                 (default 1000 levels, 1048576 nodes; docs/terms.md)\n"
  "  --max-activation MS\n"
  "                 the CPU time one activation of a handler may take before\n"
  "                 its process fails with \"activation budget exceeded\"\n"
  "                 (default 1000; 0: no budget)\n"
  "  --max-memory SIZE\n"
  "                 the memory the program's processes and messages may hold\n"
  "                 (bytes, or with K, M or G): the process whose event\n"
  "                 takes it past SIZE fails with \"not enough memory\", the\n"
  "                 rest go on (default 7/8 of the cgroup's memory limit or of\n"
  "                 the machine's memory, the less; 0: none; under\n"
  "                 --workers N each worker gets 1/N; docs/limits.md)\n"
  "  -h, --help     show this help and exit\n"
  "  -v, --version  show the version and exit\n"
  "\n"
  INSPECT_HELP
  "\n"
  "The script sees its arguments in the global `arg` (arg[0] is the script)\n"
  "and as `...`.\n"
  "\n"
  "SIGINT (Ctrl-C) or SIGTERM stops the program gracefully: listeners close\n"
  "at once, open sessions get the drain time, then whatever is left is\n"
  "closed and the program exits 0.  A second signal stops it at once.\n"
  "\n"
  "Log lines (market.log, the drivers' warnings) go to stderr, each with the\n"
  "time, level, VM path, pid and name of the process that logged it.\n"
  "\n"
  "A process that fails prints a crash report to stderr: its VM, pid and\n"
  "name, the reason, the traceback of its code and the endpoints it held.\n"
  "\n"
  "A process ends the whole program with market.exit(status): every process\n"
  "is ended (reason \"exit\") and market exits with that status.\n"
  "\n"
  "Exit status: 0 when every process finished (or a stop ended them), 1 when\n"
  "the boot process failed (its crash report is printed), 2 for a usage\n"
  "error, 3 with --strict when another process failed, 128 + N when a\n"
  "second signal N ended a stop, S after market.exit(S) (whatever happened\n"
  "before).\n";

/* Where the --trace lines go. */
typedef struct trace_out {
  FILE *f;                 /* stderr, or --trace-file's */
  const char *path;        /* --trace-file's, or NULL */
  mk_host *h;
} trace_out;

/* A line that cannot be written (a full disk, a reader gone) is said once
** and the trace stops: every later line was lost without a word, each
** still formatted.  (Where stderr fails, nothing can say so.) */
static void trace_line(void *ud, const char *line) {
  trace_out *o = ud;
  if (fprintf(o->f, "%s\n", line) >= 0) return;
  if (o->path != NULL)
    fprintf(stderr, "market: --trace-file: cannot write to '%s': %s; the trace stops\n", o->path,
            strerror(errno));
  mk_host_trace(o->h, NULL, NULL);
}

/* What the --trace-* options asked for.  The globs point into argv. */
typedef struct trace_args {
  int on;
  mk_trace_opts o;
  const char *file;
  mk_pid *pids;            /* owned */
  const char **names, **vms;   /* owned arrays, argc long */
} trace_args;

/* Parse the --trace-* option `opt` with argument `arg` into t.  0, or -1
** having said why (a usage error). */
static int trace_option(trace_args *t, const char *opt, const char *arg) {
  const char *s;
  t->on = 1;
  if (strcmp(opt, "--trace-name") == 0) t->names[t->o.nnames++] = arg;
  else if (strcmp(opt, "--trace-vm") == 0) t->vms[t->o.nvms++] = arg;
  else if (strcmp(opt, "--trace-file") == 0) t->file = arg;
  else if (strcmp(opt, "--trace-format") == 0) {
    if (strcmp(arg, "json") != 0 && strcmp(arg, "text") != 0) {
      fprintf(stderr, "market: --trace-format: '%s' is neither text nor json\n", arg);
      return -1;
    }
    t->o.json = strcmp(arg, "json") == 0;
  } else if (strcmp(opt, "--trace-topic") == 0) {
    const char *why;
    size_t pos;
    if (t->o.topic != NULL) {
      fputs("market: --trace-topic given twice (one pattern: use _ inside it)\n", stderr);
      return -1;
    }
    if ((t->o.topic = mk_read(arg, strlen(arg), &pos, &why)) == NULL) {
      fprintf(stderr, "market: --trace-topic: %s, at byte %zu of '%s'\n", why, pos, arg);
      return -1;
    }
  } else for (s = arg;; s++) {      /* --trace-pid, --trace-kind: comma lists */
    size_t n = strcspn(s, ",");
    char item[32], *end;
    int k;
    if (n == 0 || n >= sizeof item) goto bad;
    memcpy(item, s, n);
    item[n] = '\0';
    if (strcmp(opt, "--trace-kind") == 0) {
      if ((k = mk_trace_kind(item)) < 0) goto bad;
      t->o.kinds |= 1u << k;
    } else {
      mk_pid *np;
      if (item[0] < '0' || item[0] > '9') goto bad;
      if ((np = realloc(t->pids, (t->o.npids + 1) * sizeof *np)) == NULL) goto bad;
      t->pids = np;
      errno = 0;
      t->pids[t->o.npids++] = strtoull(item, &end, 10);
      /* Past 2^64 strtoull gives its largest value: a pid nobody has. */
      if (*end != '\0' || errno == ERANGE) goto bad;
    }
    s += n;
    if (*s == '\0') return 0;
    continue;
  bad:
    fprintf(stderr, "market: %s: '%.*s' is not a %s (try market --help)\n", opt, (int)n, s,
            strcmp(opt, "--trace-kind") == 0 ? "kind of trace line" : "pid");
    return -1;
  }
  return 0;
}

/* Free what t holds and return status. */
static int trace_end(trace_args *t, int status) {
  mk_unref(t->o.topic);
  free(t->pids);
  free(t->names);
  free(t->vms);
  return status;
}

static int is_trace_option(const char *opt) {
  static const char *const opts[] = {"--trace-pid", "--trace-name", "--trace-vm", "--trace-kind",
                                     "--trace-topic", "--trace-format", "--trace-file", NULL};
  const char *const *o;
  for (o = opts; *o; o++)
    if (strcmp(opt, *o) == 0) return 1;
  return 0;
}

/* Lua's warnings (warn(), "error in __gc (...)"): log lines at warn, so
** that they carry the time and the process, go to a sink, and a message
** made of what a peer sent cannot forge a line (docs/inspect.md). */
static void warning_line(mk_host *h, const char *message, void *ud) {
  (void)ud;
  mk_host_log(h, MK_LOG_WARN, message);
}

/* Crash reports under --quiet: only the boot process's, whose failure is
** the program's (exit 1) and would otherwise go unexplained. */
static void quiet_crash(mk_host *h, const mk_crash *c, void *ud) {
  char *text;
  (void)h;
  (void)ud;
  if (!c->boot || (text = mk_crash_format(c)) == NULL) return;
  fputs(text, stderr);
  free(text);
}

/* The boot process --cluster starts, before the script: the cluster
** driver, with the URL, the cluster name, the node name and the worker's
** number (NULL when not a worker: mk_worker) as its arguments.  Under
** --workers each worker is a node of its own: a --node name gets the
** worker's number (NAME-i).  A driver that fails (no server to connect
** to) ends the program with status 1: the user asked for a cluster. */
static const char cluster_boot[] =
  "local url, name, node, worker = ...\n"
  "if node and worker then node = node .. '-' .. worker end\n"
  "local market, cluster = require 'market', require 'market.cluster'\n"
  "local ok, driver = pcall(cluster.driver, { url = url, cluster = name, node = node })\n"
  "if not ok then\n"
  "  io.stderr:write('market: --cluster: ', tostring(driver), '\\n')\n"
  "  market.perform(market.exit(1))\n"
  "end\n"
  "local pid = market.perform(driver)\n"
  "market.perform(market.monitor(pid, function(_, reason)\n"
  "  if reason == nil then return end\n"
  "  io.stderr:write('market: --cluster: ', tostring(reason), '\\n')\n"
  "  return market.transition_no_state(market.exit(1))\n"
  "end))\n";

/* The length of arg's scheme and "://" when it is nats:// or tls://
** (over TLS, with the system's CA certificates), else 0. */
static size_t cluster_scheme(const char *arg) {
  return strncmp(arg, "nats://", 7) == 0 ? 7 : strncmp(arg, "tls://", 6) == 0 ? 6 : 0;
}

/* A cluster's or a node's name as the driver takes it (drivers/cluster.lua,
** check_name): letters, digits, '-' and '_', 1 to 255 bytes.  Checked here
** too, so that a bad one is a usage error, not a program that runs on
** without its cluster until it ends. */
static int cluster_name_ok(const char *s) {
  size_t n = strlen(s), i;
  if (n == 0 || n > 255) return 0;
  for (i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_') return 0;
  return 1;
}

/* Is arg nats://HOST:PORT[/NAME] (or tls://) as far as its shape goes: the
** scheme, then something before the slash (libnats judges the host and
** port), and a good name after it if there is one. */
static int cluster_url_ok(const char *arg) {
  size_t k = cluster_scheme(arg);
  const char *slash = k != 0 ? strchr(arg + k, '/') : NULL;
  return k != 0 && arg[k] != '\0' && arg[k] != '/' && (slash == NULL || cluster_name_ok(slash + 1));
}

/* Split --cluster's nats://HOST:PORT[/NAME] (cluster_url_ok) into the URL
** and the cluster name (NULL: the default), both malloc'd; -1 out of
** memory. */
static int cluster_arg(const char *arg, char **url, char **name) {
  const char *hostport = arg + cluster_scheme(arg), *slash = strchr(hostport, '/');
  size_t n;
  n = slash ? (size_t)(slash - arg) : strlen(arg);
  if ((*url = malloc(n + 1)) == NULL) return -1;
  memcpy(*url, arg, n);
  (*url)[n] = '\0';
  *name = NULL;
  if (slash && slash[1] && (*name = strdup(slash + 1)) == NULL) return -1;
  return 0;
}

/*
** {======================================================
** --workers N: N copies of the program, one process each
** =======================================================
*/

#define WORKERS_MAX MK_WORKERS_MAX    /* and MARKET_WORKER's n (mk_worker) */

/* The workers' command line: this one without `--workers N`, which the
** parsing of the options blanked (NULL), so that an argument of another
** option or of the script that reads "--workers" stays.  A NULL-terminated
** array the caller frees; NULL out of memory. */
static char **worker_argv(int argc, char **argv) {
  char **w = malloc(((size_t)argc + 1) * sizeof *w);
  int i, k = 0;
  if (w == NULL) return NULL;
  for (i = 0; i < argc; i++)
    if (argv[i] != NULL) w[k++] = argv[i];
  w[k] = NULL;
  return w;
}

/* Worker i (0-based) of n: its environment, then this very program, with
** mask as its signal mask.  SIGINT and SIGTERM stay blocked in it until the
** program takes them (main, once its stop on them is set): one the parent
** passed on before would otherwise take its default action and kill the
** worker instead of stopping it gracefully. */
static void worker_exec(char **wargv, int i, int n, pid_t parent, const sigset_t *mask) {
  char env[32];
  snprintf(env, sizeof env, "%d/%d", i + 1, n);
  /* Its own process group: a terminal's Ctrl-C (sent to the foreground
  ** group) reaches the parent alone, which passes it on once.  Otherwise
  ** each worker would get it twice and take the second as "stop at once". */
  setpgid(0, 0);
#ifdef __linux__
  /* Out of the terminal's group, a worker must still not outlive a parent
  ** that was killed: it gets SIGTERM then, and stops gracefully. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
#endif
  if (setenv("MARKET_WORKER", env, 1) != 0 || sigprocmask(SIG_SETMASK, mask, NULL) != 0) {
    fprintf(stderr, "market: worker %d: %s\n", i + 1, strerror(errno));
    _exit(1);
  }
  execv("/proc/self/exe", wargv);
  execvp(wargv[0], wargv);     /* no /proc: the name it was run by */
  fprintf(stderr, "market: worker %d: cannot run %s: %s\n", i + 1, wargv[0], strerror(errno));
  _exit(127);
}

/* Say how worker i (0-based) of n ended, if it failed; its status as a
** shell has it (128 + N for a signal). */
static int worker_ended(int i, int n, pid_t pid, int st) {
  if (WIFSIGNALED(st)) {
    fprintf(stderr, "market: worker %d of %d (pid %ld) was killed by signal %d (%s)\n", i + 1, n,
            (long)pid, WTERMSIG(st), strsignal(WTERMSIG(st)));
    return 128 + WTERMSIG(st);
  }
  if (WEXITSTATUS(st) != 0)
    fprintf(stderr, "market: worker %d of %d (pid %ld) exited with status %d\n", i + 1, n,
            (long)pid, WEXITSTATUS(st));
  return WEXITSTATUS(st);
}

/*
** Run the program as n workers and wait for them all.  Signals are taken
** synchronously (sigwaitinfo), so there is no handler to race with: SIGINT
** and SIGTERM are passed on to every worker still running, SIGCHLD reaps.
** A worker that ends does not end the others (they still serve the shared
** ports); the status is the first failed worker's, or 0.
*/
static int run_workers(int argc, char **argv, int n) {
  char **wargv = worker_argv(argc, argv);
  pid_t *pids = calloc((size_t)n, sizeof *pids), parent = getpid();
  sigset_t set, old, wmask;
  int live = 0, status = 0, i;
  if (wargv == NULL || pids == NULL) {
    fputs("market: out of memory\n", stderr);
    free(wargv);
    free(pids);
    return 1;
  }
  /* As in a host (market.h): the report of a worker's end, written to a
  ** log pipe whose reader died, must not end the parent, and with it (by
  ** PR_SET_PDEATHSIG) the workers still serving.  The workers inherit the
  ** disposition, which is the one their hosts would set. */
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, &old);
  wmask = old;                 /* the workers': see worker_exec */
  sigaddset(&wmask, SIGINT);
  sigaddset(&wmask, SIGTERM);
  fflush(NULL);
  for (i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid == 0) worker_exec(wargv, i, n, parent, &wmask);
    if (pid < 0) {
      fprintf(stderr, "market: cannot start worker %d: %s\n", i + 1, strerror(errno));
      status = 1;
      for (i--; i >= 0; i--) kill(pids[i], SIGTERM);
      break;
    }
    pids[i] = pid;
    live++;
  }
  while (live > 0) {
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info), st;
    pid_t pid;
    if (sig == SIGINT || sig == SIGTERM) {
      for (i = 0; i < n; i++)
        if (pids[i] > 0) kill(pids[i], sig);
      continue;
    }
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
      for (i = 0; i < n && pids[i] != pid; i++) {}
      if (i == n) continue;
      pids[i] = 0;
      live--;
      st = worker_ended(i, n, pid, st);
      if (status == 0) status = st;
    }
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  free(wargv);
  free(pids);
  return status;
}

/* }====================================================== */

/* --inspect: say where the inspector is, or why it is not (the program
** then ends: it was asked to be inspectable). */
static void inspector_told(mk_host *h, const char *url, const char *error, void *ud) {
  (void)ud;
  if (url != NULL) {
    fprintf(stderr, "market: inspector on %s\n", url);
    return;
  }
  fprintf(stderr, "market: --inspect: %s\n", error);
  mk_host_exit(h, 1);
}

/* -i: the prompt takes SIGINT and SIGTERM itself, and begins a graceful
** stop on the second Ctrl-C, SIGTERM or the end of input (lua/repl.lua),
** then goes.  From that stop on, the signals are the program's, as without
** -i: one more ends it at once with 128 + N, through the teardown (it was
** the default action, the process killed by the signal). */
static struct { mk_host *h; double drain; } prompt_stop;

static void stopping_boot(mk_proc *self, void *ud) {
  mk_term *stopping = mk_record("market:stopping", 1, mk_wild());
  (void)ud;
  mk_add_subscriber(self, "stopping", stopping);   /* NULL: fails the process, saying so */
  mk_unref(stopping);
}

/* The ground's market:stopping publisher has come: a stop has begun. */
static void stopping_seen(mk_proc *self, void *ud, const mk_role *peer, const char *endpoint) {
  (void)self; (void)ud; (void)peer; (void)endpoint;
  mk_host_stop_on_signals(prompt_stop.h, prompt_stop.drain);
}

static const mk_native stopping_watch = { stopping_boot, stopping_seen, NULL, NULL, NULL, NULL };

/* The argument of --drain or --max-activation: milliseconds, finite, 0 or
** more; -1 if not. */
static double ms_arg(const char *s) {
  char *end;
  double ms = strtod(s, &end);
  return end != s && *end == '\0' && ms >= 0 && isfinite(ms) ? ms : -1;
}

/* The argument of --max-memory: bytes, or a number with K, M or G
** (powers of 1024); -1 if not. */
static long long size_arg(const char *s) {
  char *end;
  unsigned long long n, unit = 1;
  if (*s < '0' || *s > '9') return -1;
  errno = 0;
  n = strtoull(s, &end, 10);
  switch (*end) {
  case 'k': case 'K': unit = 1ULL << 10; end++; break;
  case 'm': case 'M': unit = 1ULL << 20; end++; break;
  case 'g': case 'G': unit = 1ULL << 30; end++; break;
  default: break;
  }
  if (errno != 0 || *end != '\0' || n > (unsigned long long)LLONG_MAX / unit) return -1;
  return (long long)(n * unit);
}

/* The memory limit (pool.h): --max-memory's, or 7/8 of the cgroup's
** memory limit or of the machine's memory, the less (the rest for what
** the pool does not count: code, stacks, libraries' own memory, the
** kernel's socket buffers, which the cgroup charges too): past either,
** the kernel's OOM killer ends the whole program.  A worker of
** --workers N takes 1/N (MARKET_WORKER=i/N), read by the rule of
** market.worker (mk_worker), so that the share and market.worker.count
** agree and a malformed variable is ignored, not a divisor. */
static void set_memory_limit(long long given, char *said, size_t size) {
  size_t bytes, cg = mk_cgroup_memory_max(NULL, NULL), ram = 0;
  long pages = sysconf(_SC_PHYS_PAGES), pagesize = sysconf(_SC_PAGESIZE);
  const char *from = "--max-memory";
  int i, n;                    /* worker i of n */
  mk_worker(&i, &n);
  if (pages > 0 && pagesize > 0 && (size_t)pages <= SIZE_MAX / (size_t)pagesize)
    ram = (size_t)pages * (size_t)pagesize;
  if (given >= 0) {
    bytes = (size_t)given;
  } else {
    int by_cgroup = cg != 0 && (ram == 0 || cg < ram);
    from = by_cgroup ? "7/8 of the cgroup's memory limit" : "7/8 of the machine's memory";
    bytes = by_cgroup ? cg : ram;
    bytes -= bytes / 8;
  }
  if (bytes == 0) {
    snprintf(said, size, "market: no memory limit (%s 0)", from);
    return;
  }
  mk_pool_set_limit(bytes / (size_t)n > 0 ? bytes / (size_t)n : 1);
  snprintf(said, size, "market: memory limit %zu MiB (%s%s)", mk_pool_limit() >> 20, from,
           n > 1 ? ", a worker's share" : "");
}

/* Standard descriptors closed when market started (`2>&-`, a parent
** that closed them) keep their numbers: each gets /dev/null opened with
** O_PATH, which reads and writes refuse (EBADF) as they would a closed
** one.  Left free, the numbers went to the next opens: the event loop's
** epoll and eventfd, then sockets, so crash reports and log lines meant
** for standard error were written into a client's connection.  The
** stdio driver refuses these, saying why (lsys.c, std_take).  Close on
** exec: a command the program runs sees them closed, as market did. */
static void std_reserve(void) {
  int fd;
  for (fd = 0; fd <= 2; fd++) {
    int got;
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    got = open("/dev/null", O_PATH | O_CLOEXEC);
    if (got >= 0 && got != fd) close(got);    /* only a race could do that */
  }
}

/* libev's allocator: realloc, tried again once the pool has given back
** what it keeps (pool.h, mk_pool_realloc).  libev ends the program when
** its allocator fails; its default one failed for 32 bytes beside
** hundreds of megabytes the pool kept from a process killed for running
** out of memory, and took every other process with it. */
static void *ev_alloc(void *p, long size) {
  if (size > 0) return mk_pool_realloc(p, (size_t)size);
  free(p);
  return NULL;
}

int main(int argc, char **argv) {
  const char *const *args = (const char *const *)argv;
  const char *code = NULL, *inspect = NULL;
  char *stdin_code = NULL;     /* the script `-`, read from standard input; owned */
  const char *stdin_script = NULL;   /* its chunk, in stdin_code (script_start) */
  size_t stdin_len = 0;
  double drain = 5000;
  int drivers = 1, quiet = 0, strict = 0, status = 0, workers = 0, i, first, codei = -1;
  int ecount = 0;              /* -e options seen */
  int interactive = 0;         /* -i, or no script at a terminal: lua/repl.lua */
  int rc, exited, exit_status; /* the run's, and its exit's */
  int noscript;
  double budget = -1;
  long long memory = -1;       /* --max-memory: -1 not given */
  char limit_said[160];        /* the memory limit, in words, logged at level info */
  int loglevel = -1;
  mk_host *h;
  mk_error err;
  mk_pid pid;
  trace_args trace;
  FILE *tracefile = stderr;
  trace_out traceout;
  const char *cluster = NULL, *node = NULL;
  char *cluster_url = NULL, *cluster_name = NULL;

  std_reserve();
  ev_set_allocator(ev_alloc);
  memset(&trace, 0, sizeof trace);
  trace.names = calloc((size_t)argc, sizeof *trace.names);
  trace.vms = calloc((size_t)argc, sizeof *trace.vms);
  if (trace.names == NULL || trace.vms == NULL) { fputs("market: out of memory\n", stderr); return 1; }
  trace.o.names = trace.names;
  trace.o.vms = trace.vms;

  /* Options first: help and version win wherever they are, before the
  ** script; anything else starting with '-' is a usage error. */
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return trace_end(&trace, 0);
    }
    if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0) {
      printf("market %s (%s)\n", mk_version(), mk_lua_release());
      return trace_end(&trace, 0);
    }
    if (strcmp(argv[i], "-e") == 0) {
      if (++i >= argc) { fputs("market: -e needs an argument\n", stderr); return trace_end(&trace, 2); }
      /* One chunk is the boot process: a second -e replaced the first. */
      if (ecount++ > 0) {
        fputs("market: -e given twice: the code is one chunk (join the pieces with ';')\n", stderr);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--max-activation") == 0) {
      if (++i >= argc) { fputs("market: --max-activation needs a number of ms\n", stderr); return trace_end(&trace, 2); }
      if (ms_arg(argv[i]) < 0) {
        fprintf(stderr, "market: --max-activation: '%s' is not a number of ms >= 0\n", argv[i]);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--max-memory") == 0) {
      if (++i >= argc) { fputs("market: --max-memory needs a size\n", stderr); return trace_end(&trace, 2); }
      if ((memory = size_arg(argv[i])) < 0) {
        fprintf(stderr, "market: --max-memory: '%s' is not a size (bytes, or a number with K, M or G)\n",
                argv[i]);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--max-term-depth") == 0 || strcmp(argv[i], "--max-term-size") == 0) {
      int depth = strcmp(argv[i], "--max-term-depth") == 0;
      char *end;
      long long n;
      if (++i >= argc) { fprintf(stderr, "market: %s needs a number\n", argv[i - 1]); return trace_end(&trace, 2); }
      n = strtoll(argv[i], &end, 10);
      if (end == argv[i] || *end != '\0' || n < 1 ||
          (depth ? mk_term_set_depth_limit((size_t)n) : mk_term_set_size_limit((size_t)n)) != 0) {
        fprintf(stderr, "market: %s: '%s' is not a number from 1 to %lu\n", argv[i - 1], argv[i],
                (unsigned long)(depth ? MK_TERM_DEPTH_MAX : MK_TERM_SIZE_MAX));
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--workers") == 0) {
      char *end;
      long n = ++i < argc ? strtol(argv[i], &end, 10) : 0;
      if (i >= argc || end == argv[i] || *end != '\0' || n < 1 || n > WORKERS_MAX) {
        fprintf(stderr, "market: --workers needs a number from 1 to %d\n", WORKERS_MAX);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--inspect") == 0) {
      if (++i >= argc) { fputs("market: --inspect needs [HOST:]PORT\n", stderr); return trace_end(&trace, 2); }
      continue;
    }
    if (strcmp(argv[i], "--log-level") == 0) {
      if (++i >= argc || mk_log_level_parse(argv[i]) < 0) {
        fputs("market: --log-level needs a level: error, warn, info or debug\n", stderr);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (is_trace_option(argv[i])) {
      if (++i >= argc) { fprintf(stderr, "market: %s needs an argument\n", argv[i - 1]); return trace_end(&trace, 2); }
      if (trace_option(&trace, argv[i - 1], argv[i]) != 0) return trace_end(&trace, 2);
      continue;
    }
    if (strcmp(argv[i], "--cluster") == 0 || strcmp(argv[i], "--node") == 0) {
      if (++i >= argc) { fprintf(stderr, "market: %s needs an argument\n", argv[i - 1]); return trace_end(&trace, 2); }
      if (argv[i - 1][2] == 'c' && !cluster_url_ok(argv[i])) {
        fprintf(stderr, "market: --cluster: '%s' is not nats://HOST:PORT[/NAME] (or tls://), "
                "NAME of letters, digits, '-' and '_'\n", argv[i]);
        return trace_end(&trace, 2);
      }
      if (argv[i - 1][2] == 'n' && !cluster_name_ok(argv[i])) {
        fprintf(stderr, "market: --node: '%s' is not a name of 1 to 255 letters, digits, '-' "
                "and '_'\n", argv[i]);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--drain") == 0) {
      if (++i >= argc || ms_arg(argv[i]) < 0) {
        fputs("market: --drain needs a number of milliseconds (0 or more)\n", stderr);
        return trace_end(&trace, 2);
      }
      continue;
    }
    if (strcmp(argv[i], "--trace") == 0 || strcmp(argv[i], "--no-drivers") == 0 ||
        strcmp(argv[i], "--quiet") == 0 || strcmp(argv[i], "--strict") == 0 ||
        strcmp(argv[i], "-i") == 0)
      continue;
    if (argv[i][0] == '-' && strcmp(argv[i], "--") != 0 && strcmp(argv[i], "-") != 0) {
      fprintf(stderr, "market: unknown option '%s' (try market --help)\n", argv[i]);
      return trace_end(&trace, 2);
    }
    break;
  }
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--trace") == 0) trace.on = 1;
    else if (is_trace_option(argv[i])) i++;
    else if (strcmp(argv[i], "--no-drivers") == 0) drivers = 0;
    else if (strcmp(argv[i], "--quiet") == 0) quiet = 1;
    else if (strcmp(argv[i], "--strict") == 0) strict = 1;
    else if (strcmp(argv[i], "-i") == 0) interactive = 1;
    else if (strcmp(argv[i], "-e") == 0) code = argv[codei = ++i];
    else if (strcmp(argv[i], "--max-activation") == 0) budget = ms_arg(argv[++i]);
    else if (strcmp(argv[i], "--max-term-depth") == 0 || strcmp(argv[i], "--max-term-size") == 0 ||
             strcmp(argv[i], "--max-memory") == 0) i++;
    else if (strcmp(argv[i], "--drain") == 0) drain = ms_arg(argv[++i]);
    else if (strcmp(argv[i], "--cluster") == 0) cluster = argv[++i];
    else if (strcmp(argv[i], "--node") == 0) node = argv[++i];
    else if (strcmp(argv[i], "--log-level") == 0) loglevel = mk_log_level_parse(argv[++i]);
    else if (strcmp(argv[i], "--workers") == 0) {
      workers = atoi(argv[i + 1]);
      argv[i] = argv[i + 1] = NULL;           /* not the workers' (worker_argv) */
      i++;
    }
    else if (strcmp(argv[i], "--inspect") == 0) inspect = argv[++i];
    else if (strcmp(argv[i], "--") == 0) { i++; break; }
    else break;
  }
  first = i;   /* the script (or, with -e, its first argument) */
  if (node != NULL && cluster == NULL) {   /* it named nothing: the user meant a cluster */
    fputs("market: --node names this node in a cluster: give --cluster too\n", stderr);
    return trace_end(&trace, 2);
  }
  /* No script: standard input is one, as lua(1) has it; at a terminal
  ** (or with -i) a prompt takes it chunk by chunk instead. */
  noscript = code == NULL && first >= argc;
  if (noscript && !interactive && isatty(0)) interactive = 1;
  if (interactive && workers > 0) {
    fputs("market: -i cannot be given with --workers: one prompt cannot serve N programs\n", stderr);
    return trace_end(&trace, 2);
  }
  if (interactive && !noscript && code == NULL && strcmp(argv[first], "-") == 0) {
    fputs("market: -i reads standard input: the script cannot be - too\n", stderr);
    return trace_end(&trace, 2);
  }
  /* market inspect ADDR: a client of another program's inspector. */
  if (!noscript && code == NULL && strcmp(argv[first], "inspect") == 0) {
    if (argc - first == 2 && (strcmp(argv[first + 1], "-h") == 0 ||
                              strcmp(argv[first + 1], "--help") == 0)) {
      fputs("usage: market inspect [HOST:]PORT\n\n" INSPECT_HELP, stdout);
      return trace_end(&trace, 0);
    }
    if (argc - first != 2) {
      fputs("market inspect: want one [HOST:]PORT (try market --help)\n", stderr);
      return trace_end(&trace, 2);
    }
    code = "return require(\"market.inspect\").cli(...)";
    first++;
    /* The client is market's own code, bounded by its 5 s wait and its
    ** answer's size: a large program's snapshot took more than one
    ** activation's budget to read, and the client failed with a crash
    ** report instead of printing it. */
    if (budget < 0) budget = 0;
  }
  /* The options were checked here, once: the workers get them as they are.
  ** One inspector port cannot serve N programs. */
  if (workers > 0 && inspect != NULL) {
    fputs("market: --inspect cannot be given with --workers (docs/workers.md)\n", stderr);
    return trace_end(&trace, 2);
  }
  /* The script `-`: standard input, read now, before the event loop is
  ** made (on a closed descriptor 0 it would read the loop's own).  Each
  ** worker would read what the others left. */
  if (code == NULL && (noscript ? !interactive : strcmp(argv[first], "-") == 0)) {
    if (workers > 0) {
      fputs("market: the script - (standard input) cannot be given with --workers\n", stderr);
      return trace_end(&trace, 2);
    }
    if ((stdin_code = read_stdin(&stdin_len)) == NULL) {
      fprintf(stderr, "market: cannot read the script from standard input: %s\n", strerror(errno));
      return trace_end(&trace, 1);
    }
    stdin_script = script_start(stdin_code, &stdin_len);
  }
  if (workers > 0) return trace_end(&trace, run_workers(argc, argv, workers));

  set_memory_limit(memory, limit_said, sizeof limit_said);
  h = mk_host_new(NULL, &err);
  if (h == NULL) {
    fprintf(stderr, "market: %s\n", err.message);
    free(stdin_code);
    return trace_end(&trace, 1);
  }
  if (trace.on) {
    trace.o.pids = trace.pids;
    if (trace.file != NULL && (tracefile = mkl_trace_file(trace.file)) == NULL) {
      fprintf(stderr, "market: --trace-file: cannot open '%s': %s\n", trace.file, strerror(errno));
      mk_host_free(h);
      free(stdin_code);
    return trace_end(&trace, 1);
    }
    if (tracefile != stderr) setvbuf(tracefile, NULL, _IOLBF, 0);   /* tail -f */
    if (mk_host_trace_opts(h, &trace.o) != MK_OK) {
      fprintf(stderr, "market: %s\n", mk_host_error(h));
      mk_host_free(h);
      free(stdin_code);
    return trace_end(&trace, 1);
    }
    traceout.f = tracefile;
    traceout.path = trace.file;
    traceout.h = h;
    mk_host_trace(h, trace_line, &traceout);
  }
  trace_end(&trace, 0);        /* the trace made copies */
  if (quiet) mk_host_on_crash(h, quiet_crash, NULL);
  if (loglevel >= 0) mk_host_set_log_level(h, loglevel);
  {
    /* Set but not what --workers sets: ignored (mk_worker), which says so,
    ** since the variable was meant to tell something. */
    const char *w = getenv("MARKET_WORKER");
    int wi, wn;
    if (w != NULL && !mk_worker(&wi, &wn)) {
      char said[200];
      snprintf(said, sizeof said, "market: MARKET_WORKER=%.64s%s ignored: not i/n with "
               "1 <= i <= n <= %d (docs/workers.md)", w, strlen(w) > 64 ? "..." : "", WORKERS_MAX);
      mk_host_log(h, MK_LOG_WARN, said);
    }
  }
  mk_host_log(h, MK_LOG_INFO, limit_said);     /* (what the process deaths it brings are about) */
  if (budget >= 0) mk_host_set_max_activation(h, budget);
  mk_host_on_warning(h, warning_line, NULL);
  /* arg[0] is the script (with -e: the code), as lua(1) has it.  Options
  ** or "--" may come between the code and its arguments: the code moves to
  ** just before them (argv[first - 1]), the options after it one down,
  ** among the negative indices with the interpreter. */
  if (codei >= 0) {
    char *c = argv[codei];
    for (i = codei; i < first - 1; i++) argv[i] = argv[i + 1];
    argv[first - 1] = c;
  }
  if (mk_host_set_arg(h, argc, args, code ? first - 1 : noscript ? 0 : first) != MK_OK ||
      (drivers && mk_host_start_drivers(h) != MK_OK)) {
    fprintf(stderr, "market: %s\n", mk_host_error(h));
    status = 1;
    goto done;
  }
  if (interactive) {
    prompt_stop.h = h;
    prompt_stop.drain = drain;
    if (mk_host_spawn_native(h, &stopping_watch, NULL, "stop-watch") == 0) {
      fprintf(stderr, "market: %s\n", mk_host_error(h));
      status = 1;
      goto done;
    }
  }
  if (inspect != NULL && mk_host_inspect(h, inspect, inspector_told, NULL) != MK_OK) {
    fprintf(stderr, "market: --inspect: %s\n", mk_host_error(h));
    status = 2;
    goto done;
  }
  if (cluster != NULL) {
    const char *cargs[4];
    char worker[16];
    int wi, wn;
    if (cluster_arg(cluster, &cluster_url, &cluster_name) != 0) {
      fputs("market: out of memory\n", stderr);
      status = 1;
      goto done;
    }
    cargs[0] = cluster_url;
    cargs[1] = cluster_name;
    cargs[2] = node;
    cargs[3] = NULL;
    if (mk_worker(&wi, &wn)) {
      snprintf(worker, sizeof worker, "%d", wi);
      cargs[3] = worker;
    }
    if (mk_host_spawn_string(h, cluster_boot, "(--cluster)", 4, cargs) == 0) {
      fprintf(stderr, "market: %s\n", mk_host_error(h));
      status = 1;
      goto done;
    }
  }
  pid = 0;
  if (code)
    pid = mk_host_spawn_string(h, code, "(command line)", argc - first, args + first);
  else if (stdin_code != NULL)
    /* Its whole length, NULs and all, and precompiled chunks as well
    ** (mode NULL), as a script given by name (mk_host_spawn_file). */
    pid = noscript ? mk_host_spawn_buffer(h, stdin_script, stdin_len, "stdin", NULL, 0, NULL)
                   : mk_host_spawn_buffer(h, stdin_script, stdin_len, "stdin", NULL,
                                          argc - first - 1, args + first + 1);
  else if (!noscript)
    pid = mk_host_spawn_file(h, argv[first], argc - first - 1, args + first + 1);
  if (interactive && (noscript || pid != 0)) {     /* the prompt, after the script */
    char ms[32];
    const char *rargs[1];
    snprintf(ms, sizeof ms, "%.17g", drain);
    rargs[0] = ms;
    pid = mk_host_spawn_string(h, "return require(\"market.repl\").boot(...)", "repl", 1, rargs);
  }
  if (pid == 0) {
    fprintf(stderr, "market: %s\n", mk_host_error(h));
    status = 1;
    goto done;
  }
  /* From here on SIGINT and SIGTERM stop the program gracefully; while the
  ** script was read, their default action ended it, as it ends lua(1): a
  ** script that is a FIFO with no writer blocked in open(2), where a stop
  ** begun was never served.  The prompt takes both itself (lua/repl.lua):
  ** it stops the chunk running at SIGINT. */
  if (!interactive && mk_host_stop_on_signals(h, drain) != MK_OK) {
    fprintf(stderr, "market: %s\n", mk_host_error(h));
    status = 1;
    goto done;
  }
  /* A worker of --workers N was started with both blocked (worker_exec):
  ** one that came meanwhile is taken now, as a stop. */
  if (!interactive) {
    sigset_t stops;
    sigemptyset(&stops);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &stops, NULL);
  }
  /* A boot process's failure was printed as its crash report. */
  rc = mk_host_run(h);
  exited = mk_host_exited(h);
  exit_status = mk_host_exit_status(h);
  /* The teardown of what is left (docs/semantics.md §7) here, not in
  ** mk_host_free, which reports nothing: a handler that fails as the
  ** others go fails as any other, with its report and --strict's status.
  ** (An exit asked for meanwhile changes nothing, as in mk_host_free.) */
  mk_vm_kill_all(mk_ground_vm(mk_host_ground(h)), NULL);
  if (rc == MK_EFAILED) status = 1;
  else if (strict && mk_host_crashes(h) > 0) status = 3;
  /* An exit says what the status is, even after a boot failure. */
  if (exited || exit_status != 0) status = exit_status;
done:
  free(stdin_code);
  free(cluster_url);
  free(cluster_name);
  mk_host_free(h);           /* may still trace: the processes it ends */
  if (tracefile != stderr) fclose(tracefile);
  return status;
}
