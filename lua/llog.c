/*
** llog.c: logging (market.log, mk_host_on_log; docs/inspect.md, "Logging").
**
** A line is "TIME LEVEL VM #PID NAME: message": the wall-clock time in UTC
** to the millisecond, the level, and the process that logged it ("-" when
** none did).  Each Lua state has its threshold (MARKET_LOG, then
** mk_host_set_log_level or market.log.level) and its sink: a Lua function
** (market.log.sink), else the host's C callback (mk_host_on_log), else
** stderr.
**
** Warnings and errors repeat where a condition lasts (accept() out of
** descriptors is retried ten times a second): each message site (its key,
** the format string for market.log) logs at most LOG_BURST lines in a
** window of LOG_WINDOW seconds; the others are counted, and the site's
** next line after the window says how many were suppressed.  The sites
** are kept in a table of LOG_SITES; a new one takes a free entry, or the
** one whose window ended longest ago.  A site never takes one whose window
** still runs: two places that took each other's entry in turn each got a
** fresh burst on every line, and neither was ever limited.  When all the
** windows run, the new sites share one more window, the crowd's: however
** many places log, at most (LOG_SITES + 1) * LOG_BURST lines a window,
** in a fixed table.
*/
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "mkl.h"

#define LOG_SITES 64
#define LOG_BURST 5
#define LOG_WINDOW 10.0

typedef struct logsite {
  uint64_t hash;             /* of the key and level; 0: free (the crowd's: 0) */
  double start;              /* the window's start, monotonic seconds */
  unsigned lines, suppressed;
} logsite;

/* A Lua state's logging, a full userdata anchored in the registry. */
typedef struct logstate {
  int threshold;             /* MK_LOG_*: lines above it are dropped */
  int sinkref;               /* the Lua sink (registry), or LUA_NOREF */
  int insink;                /* the Lua sink runs: its own lines go around it */
  mkl_log_fn fn;             /* the host's sink, or NULL */
  void *ud;
  logsite sites[LOG_SITES];
  logsite crowd;             /* the window the sites without an entry share */
} logstate;

static const char key_log = 0;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

int mk_log_level_parse(const char *name) {
  int i;
  for (i = 0; name != NULL && i <= MK_LOG_DEBUG; i++)
    if (strcmp(name, level_names[i]) == 0) return i;
  return -1;
}

const char *mk_log_level_name(int level) {
  return level >= MK_LOG_ERROR && level <= MK_LOG_DEBUG ? level_names[level] : "?";
}

static logstate *getlog(lua_State *L) {
  logstate *ls;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_log);
  ls = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return ls;
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Whether a line of this site may go now; *carry gets the count its last
** window suppressed, to be told with it. */
static int admit(logstate *ls, int level, const char *key, unsigned *carry) {
  uint64_t h = 14695981039346656037u ^ (uint64_t)level;
  const unsigned char *k;
  logsite *s = NULL, *old = NULL;
  double now;
  int i;
  *carry = 0;
  if (level > MK_LOG_WARN || key == NULL) return 1;
  for (k = (const unsigned char *)key; *k; k++) h = (h ^ *k) * 1099511628211u;
  if (h == 0) h = 1;
  now = monotonic();
  for (i = 0; i < LOG_SITES && s == NULL; i++) {
    logsite *e = &ls->sites[i];
    if (e->hash == h) s = e;
    else if (e->hash == 0 || now - e->start >= LOG_WINDOW) {
      /* Free, or over: the one over longest ago goes (a count it still
      ** held would have been told only if its place logged again). */
      if (old == NULL || (old->hash != 0 && (e->hash == 0 || e->start < old->start))) old = e;
    }
  }
  if (s == NULL && old != NULL) {
    s = old;
    s->hash = h;
    s->start = now;
    s->lines = s->suppressed = 0;
  } else if (s == NULL) {
    s = &ls->crowd;
  }
  if (s->lines == 0 && s->suppressed == 0) {   /* a window not begun: the crowd's first */
    s->start = now;
  } else if (now - s->start >= LOG_WINDOW) {
    *carry = s->suppressed;
    s->start = now;
    s->lines = s->suppressed = 0;
  }
  if (s->lines >= LOG_BURST) {
    s->suppressed++;
    return 0;
  }
  s->lines++;
  return 1;
}

void mkl_text_line(FILE *f, const char *prefix, const char *message) {
  char *text = mk_text_escaped(message, strlen(message));
  fprintf(f, "%s%s\n", prefix, text ? text : message);
  free(text);
}

char *mkl_vformat(const char *fmt, va_list ap) {
  va_list aq;
  char *s;
  int n;
  va_copy(aq, ap);
  n = vsnprintf(NULL, 0, fmt, aq);
  va_end(aq);
  if (n < 0 || (s = malloc((size_t)n + 1)) == NULL) return NULL;
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  return s;
}

char *mkl_format(const char *fmt, ...) {
  va_list ap;
  char *s;
  va_start(ap, fmt);
  s = mkl_vformat(fmt, ap);
  va_end(ap);
  return s;
}

/* The whole line, malloc'd, or NULL when out of memory. */
static char *makeline(int level, mk_proc *p, const char *msg, unsigned carry) {
  struct timespec ts;
  struct tm tm;
  char when[32], more[48] = "", pid[32] = "";
  const char *name = p ? mk_proc_name(p) : NULL;
  char *escaped = name ? mk_name_escaped(name) : NULL, *line;
  char *text = mk_text_escaped(msg, strlen(msg));   /* a message holds what a peer sent */
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  if (carry > 0) snprintf(more, sizeof more, " (%u more suppressed)", carry);
  if (p) snprintf(pid, sizeof pid, " #%llu", (unsigned long long)mk_proc_pid(p));
  line = mkl_format("%s.%03dZ %s %s%s%s%s: %s%s", when, (int)(ts.tv_nsec / 1000000),
                    mk_log_level_name(level), p ? mk_vm_path(mk_proc_vm(p)) : "-", pid,
                    name ? " " : "", escaped ? escaped : name ? name : "", text ? text : msg,
                    more);
  free(escaped);
  free(text);
  return line;
}

typedef struct sinkcall { int level; const char *line, *msg; } sinkcall;

/* Protected: sink(level, line, message). */
static int p_sink(lua_State *L) {
  sinkcall *c = lua_touserdata(L, 2);
  lua_settop(L, 1);
  lua_pushstring(L, mk_log_level_name(c->level));
  lua_pushstring(L, c->line);
  lua_pushstring(L, c->msg);
  lua_call(L, 3, 0);
  return 0;
}

int mkl_log_enabled(lua_State *L, int level) {
  logstate *ls = getlog(L);
  return ls != NULL && level <= ls->threshold;
}

void mkl_log(lua_State *L, mk_proc *p, int level, const char *key, const char *msg) {
  logstate *ls = getlog(L);
  unsigned carry;
  char *line;
  if (ls == NULL || level > ls->threshold || !admit(ls, level, key, &carry)) return;
  if (p == NULL) p = mkl_acting(L);
  line = makeline(level, p, msg, carry);
  if (line == NULL) return;
  if (ls->sinkref != LUA_NOREF && !ls->insink && lua_checkstack(L, 4)) {
    sinkcall c;
    c.level = level;
    c.line = line;
    c.msg = msg;
    lua_pushcfunction(L, p_sink);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->sinkref);
    lua_pushlightuserdata(L, &c);
    ls->insink = 1;
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) {
      ls->insink = 0;
      free(line);
      return;
    }
    ls->insink = 0;
    /* The line is not lost: it goes where it would without the sink. */
    mkl_text_line(stderr, "market: the log sink failed: ",
                  lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                 : "(error object is not a string)");
    lua_pop(L, 1);
  }
  if (ls->fn != NULL) ls->fn(ls->ud, level, line);
  else fprintf(stderr, "%s\n", line);
  free(line);
}

void mkl_logf(lua_State *L, mk_proc *p, int level, const char *key, const char *fmt, ...) {
  va_list ap;
  char *msg;
  if (!mkl_log_enabled(L, level)) return;
  va_start(ap, fmt);
  msg = mkl_vformat(fmt, ap);
  va_end(ap);
  if (msg != NULL) mkl_log(L, p, level, key, msg);
  free(msg);
}

void mkl_log_set_sink(lua_State *L, mkl_log_fn fn, void *ud) {
  logstate *ls = getlog(L);
  if (ls == NULL) return;
  ls->fn = fn;
  ls->ud = ud;
}

int mkl_log_set_level(lua_State *L, int level) {
  logstate *ls = getlog(L);
  if (ls == NULL || level < MK_LOG_ERROR || level > MK_LOG_DEBUG) return -1;
  ls->threshold = level;
  return 0;
}

/* core.log(level, key, message): a line from Lua (market.log's functions,
** market.lua, which wrote each NUL in message as \0), logged as the
** running process's. */
static int c_log(lua_State *L) {
  lua_Integer level = luaL_checkinteger(L, 1);
  const char *key = luaL_optstring(L, 2, NULL), *msg = luaL_checkstring(L, 3);
  luaL_argcheck(L, level >= MK_LOG_ERROR && level <= MK_LOG_DEBUG, 1, "no such level");
  mkl_log(L, NULL, (int)level, key, msg);
  return 0;
}

/* core.log_level([name]) -> the threshold's name (before a change) */
static int c_log_level(lua_State *L) {
  logstate *ls = getlog(L);
  size_t n;
  const char *name;
  if (!lua_isnoneornil(L, 1)) {
    int level;
    /* Its own message: luaL_checkstring's named the function '?'. */
    if (lua_type(L, 1) != LUA_TSTRING)
      return luaL_error(L, "market.log.level: a level name expected (error, warn, info, "
                        "debug), got %s", luaL_typename(L, 1));
    name = lua_tolstring(L, 1, &n);
    /* "error\0..." is no level, though its C string is */
    if (strlen(name) != n)
      return luaL_error(L, "market.log.level: a level name holds no NUL byte");
    level = mk_log_level_parse(name);
    if (level < 0)
      return luaL_error(L, "market.log.level: '%s' is not a level (error, warn, info, debug)",
                        name);
    lua_pushstring(L, mk_log_level_name(ls->threshold));
    ls->threshold = level;
    return 1;
  }
  lua_pushstring(L, mk_log_level_name(ls->threshold));
  return 1;
}

/* core.log_threshold() -> the threshold as a number, for market.log's
** functions to skip formatting what would be dropped */
static int c_log_threshold(lua_State *L) {
  lua_pushinteger(L, getlog(L)->threshold);
  return 1;
}

/* core.log_sink(f|nil) */
static int c_log_sink(lua_State *L) {
  logstate *ls = getlog(L);
  if (!lua_isnoneornil(L, 1) && lua_type(L, 1) != LUA_TFUNCTION)
    return luaL_error(L, "market.log.sink: the sink must be a function or nil, got %s",
                      luaL_typename(L, 1));
  luaL_unref(L, LUA_REGISTRYINDEX, ls->sinkref);
  ls->sinkref = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_settop(L, 1);
    ls->sinkref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

void mkl_open_log(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"log", c_log}, {"log_level", c_log_level}, {"log_threshold", c_log_threshold},
    {"log_sink", c_log_sink}, {NULL, NULL}};
  if (getlog(L) == NULL) {
    const char *env = getenv("MARKET_LOG");
    logstate *ls = lua_newuserdatauv(L, sizeof *ls, 0);
    memset(ls, 0, sizeof *ls);
    ls->sinkref = LUA_NOREF;
    ls->threshold = MK_LOG_WARN;
    if (env != NULL && *env != '\0') {
      int level = mk_log_level_parse(env);
      if (level >= 0) ls->threshold = level;
      else fprintf(stderr, "market: MARKET_LOG: '%s' is not a level (error, warn, info, debug): "
                   "logging warnings and errors\n", env);
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_log);
  }
  luaL_setfuncs(L, funcs, 0);
}
