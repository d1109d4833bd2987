/*
** ltrace.c: market.trace and ground_vm's `trace` option: which lines the
** trace of a program shows, in which format, and where they go (vm.h,
** "Traces"; docs/inspect.md, "Traces").
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mkl.h"

/* Where Lua sent the lines: one per Lua state, a userdata in the
** registry under &destkey, closed by its __gc and by mkl_trace_end. */
typedef struct tracedest {
  FILE *file;               /* opened for file=, owned; or NULL */
  char *path;               /* its path, owned, for what says it failed */
  mk_vm *vm;                /* the tree whose trace writes to it */
  mk_trace_fn saved;        /* the function trace(false) stopped, to go */
  void *savedud;            /* back to on trace(true) */
} tracedest;

static const char destkey = 0;

static void closefile(tracedest *d) {
  if (d->file) fclose(d->file);
  free(d->path);
  d->file = NULL;
  d->path = NULL;
}

/* stderr's lines: where they could not go, nothing could say so. */
static void writeline(void *ud, const char *line) {
  fprintf((FILE *)ud, "%s\n", line);
}

/* The file's lines (ud: the tracedest).  A line that cannot be written
** (a full disk, a reader gone) is said once, on stderr as the log sink's
** failure is (this may run inside any process's step, where no Lua may
** run), and the trace stops: every later line was lost without a word,
** each still formatted.  The file is closed, and the trace's next start
** without a file goes to stderr.  Changing the trace from its function
** is allowed (trace.c). */
static void fileline(void *ud, const char *line) {
  tracedest *d = ud;
  int e;
  if (d->file == NULL || fprintf(d->file, "%s\n", line) >= 0) return;
  e = errno;
  fprintf(stderr, "market.trace: cannot write to '%s': %s; the trace stops\n", d->path,
          strerror(e));
  if (d->saved == fileline) d->saved = NULL;
  closefile(d);
  mk_vm_set_trace(d->vm, NULL, NULL);
}

/* While a ground VM is open on the state, its tracer still writes to the
** file: lua_close finalizes this (newer) userdata before that ground VM,
** whose processes then end and are traced.  mkl_trace_end closes it
** then, when the ground VM is freed. */
static int dest_gc(lua_State *L) {
  tracedest *d = lua_touserdata(L, 1);
  if (mkl_ground(L) != NULL) return 0;
  closefile(d);
  return 0;
}

static tracedest *getdest(lua_State *L) {
  tracedest *d;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &destkey) == LUA_TUSERDATA) {
    d = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return d;
  }
  lua_pop(L, 1);
  d = lua_newuserdatauv(L, sizeof *d, 0);
  memset(d, 0, sizeof *d);
  lua_newtable(L);
  lua_pushcfunction(L, dest_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &destkey);
  return d;
}

void mkl_trace_end(lua_State *L) {
  tracedest *d = getdest(L);
  closefile(d);
  memset(d, 0, sizeof *d);
}

/* The string at the top, which is one: NULL when it holds a NUL byte,
** which the C string the trace keeps would cut it at. */
static const char *cstring(lua_State *L) {
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  return strlen(s) == n ? s : NULL;
}

/* The file `path`, created or truncated, as fopen(path, "w") would, but
** opened without blocking: a FIFO that no one reads is an error (ENXIO),
** where fopen stopped the whole program until a reader came.  Writes
** then block as they do on stderr.  (mkl.h: market --trace-file's too.) */
FILE *mkl_trace_file(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK, 0666), e;
  FILE *f = NULL;
  if (fd < 0) return NULL;
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0 && (f = fdopen(fd, "w")) != NULL)
    return f;
  e = errno;
  close(fd);
  errno = e;
  return NULL;
}

/* The strings (a string or a list of them) of field `key` of the options
** at index 1, into a userdata array pushed on the stack, with what holds
** the strings under it until the trace has copied them: the string, or a
** copy of the list that only this stack sees.  Not the program's list:
** the fields read after this one may run Lua (an __index of the options,
** a finalizer during an allocation) that empties it and collects the
** strings the array points to. */
static const char *const *strings(lua_State *L, const char *who, const char *key, size_t *n) {
  const char **a;
  size_t i;
  int t = lua_getfield(L, 1, key);
  *n = 0;
  if (t == LUA_TNIL) return NULL;
  if (t == LUA_TSTRING) {
    if (cstring(L) == NULL) luaL_error(L, "%s: %s must hold no NUL byte", who, key);
    a = lua_newuserdatauv(L, sizeof *a, 0);
    a[0] = lua_tostring(L, -2);
    *n = 1;
    return a;
  }
  if (t != LUA_TTABLE)
    luaL_error(L, "%s: %s must be a string or a list of strings, got %s", who, key,
               luaL_typename(L, -1));
  *n = lua_rawlen(L, -1);
  lua_createtable(L, *n < INT_MAX ? (int)*n : 0, 0);
  a = lua_newuserdatauv(L, (*n ? *n : 1) * sizeof *a, 0);
  for (i = 0; i < *n; i++) {
    if (lua_rawgeti(L, -3, (lua_Integer)i + 1) != LUA_TSTRING)
      luaL_error(L, "%s: %s[%d] must be a string, got %s", who, key, (int)i + 1,
                 luaL_typename(L, -1));
    if ((a[i] = cstring(L)) == NULL)
      luaL_error(L, "%s: %s[%d] must hold no NUL byte", who, key, (int)i + 1);
    lua_rawseti(L, -3, (lua_Integer)i + 1);     /* held by the copy */
  }
  lua_remove(L, -3);      /* the program's list */
  return a;
}

/* The kinds of the options at index 1 as bits (0: every kind); *empty
** set when they are an empty list. */
static unsigned kinds(lua_State *L, const char *who, int *empty) {
  size_t n, i;
  unsigned bits = 0;
  const char *const *k = strings(L, who, "kind", &n);
  *empty = k != NULL && n == 0;
  for (i = 0; i < n; i++) {
    int kind = mk_trace_kind(k[i]);
    if (kind < 0)
      luaL_error(L, "%s: no kind of line '%s' (spawn, quit, add, delete, send, "
                 "feedback, at_meta_level, presence, absence, message, spawned, resume, "
                 "meta, deleted)", who, k[i]);
    bits |= 1u << kind;
  }
  return bits;
}

static const mk_pid *pids(lua_State *L, const char *who, size_t *n) {
  mk_pid *a;
  size_t i;
  int t = lua_getfield(L, 1, "pid"), list = t == LUA_TTABLE;
  *n = 0;
  if (t == LUA_TNIL) return NULL;
  *n = list ? lua_rawlen(L, -1) : 1;
  a = lua_newuserdatauv(L, (*n ? *n : 1) * sizeof *a, 0);
  for (i = 0; i < *n; i++) {
    int isint;
    lua_Integer pid;
    if (list) lua_rawgeti(L, -2, (lua_Integer)i + 1);
    else lua_pushvalue(L, -2);
    pid = lua_tointegerx(L, -1, &isint);       /* a number: "5" is no pid */
    if (!isint || pid < 0 || lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "%s: pid must be a pid or a list of pids, got %s", who,
                 luaL_typename(L, -1));
    a[i] = (mk_pid)pid;
    lua_pop(L, 1);
  }
  return a;
}

/* The options table at index 1 has only these fields (`list`: how an
** error names them); mkl.h. */
void mkl_only_fields(lua_State *L, const char *who, const char *const *fields,
                     const char *list) {
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    const char *const *f = fields;
    lua_pop(L, 1);
    while (*f && !(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), *f) == 0)) f++;
    if (*f == NULL)
      luaL_error(L, "%s: no option %s (%s)", who, luaL_tolstring(L, -1, NULL), list);
  }
}

/* The filter of the options at index 1 into o, all but the topic (last:
** nothing may raise once o holds a reference).  An empty list has no value
** to match: no line passes (a count of 0 alone would be no filter). */
static void filter(lua_State *L, const char *who, mk_trace_opts *o) {
  int nokind;
  o->pids = pids(L, who, &o->npids);
  o->names = strings(L, who, "name", &o->nnames);
  o->vms = strings(L, who, "vm", &o->nvms);
  o->kinds = kinds(L, who, &nokind);
  o->none = nokind || (o->pids != NULL && o->npids == 0) ||
            (o->names != NULL && o->nnames == 0) || (o->vms != NULL && o->nvms == 0);
}

/* The trace of vm's tree (the whole program from a ground VM) as the
** options at index 1 say: true or nil is every line, false stops it.
** Returns the results of market.trace: true, or nil and why. */
static int settrace(lua_State *L, mk_vm *vm) {
  static const char *const fields[] = {"pid", "name", "vm", "kind", "topic", "format",
                                       "file", NULL};
  tracedest *d = getdest(L);
  mk_trace_opts o;
  const char *format, *path;
  char *copy = NULL;
  FILE *file = NULL;
  int rc, t;
  luaL_checkstack(L, 32, "market.trace");    /* what the fields leave there */
  memset(&o, 0, sizeof o);
  if (lua_isboolean(L, 1) && !lua_toboolean(L, 1)) {    /* false: stop */
    void *ud;
    mk_trace_fn fn = mk_vm_trace_fn(vm, &ud);
    if (fn) d->saved = fn, d->savedud = ud;
    mk_vm_set_trace(vm, NULL, NULL);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (lua_istable(L, 1)) {
    mkl_only_fields(L, "market.trace", fields, "pid, name, vm, kind, topic, format, file");
    filter(L, "market.trace", &o);
    lua_getfield(L, 1, "format");
    format = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : lua_isnil(L, -1) ? "text" : NULL;
    if (format == NULL || (strcmp(format, "text") != 0 && strcmp(format, "json") != 0))
      return luaL_error(L, "market.trace: format must be \"text\" or \"json\", got %s",
                        luaL_tolstring(L, -1, NULL));
    o.json = strcmp(format, "json") == 0;
    /* A string as it is: lua_tostring made a number a name ("5"), and
    ** fopen cut a path at a NUL. */
    t = lua_getfield(L, 1, "file");
    path = t == LUA_TSTRING ? cstring(L) : NULL;
    if (t != LUA_TNIL && path == NULL)
      return luaL_error(L, "market.trace: file must be a path, got %s",
                        t == LUA_TSTRING ? "a string with a NUL byte" : luaL_typename(L, -1));
    if (lua_getfield(L, 1, "topic") != LUA_TNIL)
      o.topic = mkl_checkterm(L, -1, "market.trace: topic");    /* last: nothing raises after it */
  } else if (!lua_isboolean(L, 1)) {   /* nil too: a variable unset would start every line */
    return luaL_error(L, "market.trace: expected a table of options, true or false, got %s",
                      luaL_typename(L, 1));
  } else {
    path = NULL;
  }
  if (path != NULL && (copy = strdup(path)) == NULL) {
    mk_unref(o.topic);
    return luaL_error(L, "market.trace: out of memory");
  }
  if (path != NULL && (file = mkl_trace_file(path)) == NULL) {
    free(copy);
    mk_unref(o.topic);
    lua_pushnil(L);
    lua_pushfstring(L, "market.trace: cannot open '%s': %s", path, strerror(errno));
    return 2;
  }
  rc = mk_vm_set_trace_opts(vm, &o);
  mk_unref(o.topic);
  if (rc != 0) {
    if (file) fclose(file);
    free(copy);
    return luaL_error(L, "market.trace: out of memory");
  }
  d->vm = vm;                           /* (one tree a state: its host's) */
  if (file) {                           /* the new file, the old one closed */
    setvbuf(file, NULL, _IOLBF, 0);
    closefile(d);
    d->file = file;
    d->path = copy;
    mk_vm_set_trace(vm, fileline, d);
    /* Where the lines went last, for trace(true) once another stopped
    ** them (mk_host_trace(h, NULL, NULL)): the file, whichever it is then. */
    d->saved = fileline;
    d->savedud = d;
  } else if (mk_vm_trace_fn(vm, NULL) == NULL) {   /* where it went, or stderr */
    if (d->saved) mk_vm_set_trace(vm, d->saved, d->savedud);
    else mk_vm_set_trace(vm, writeline, stderr);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.trace(opts): market.trace, for the program the running process
** belongs to (mkl_acting: from a coroutine of its own too, as log has it). */
static int l_trace(lua_State *L) {
  mk_proc *p = mkl_acting(L);
  mk_vm *vm;
  if (p == NULL) return luaL_error(L, "market.trace: not inside a market process "
                                   "(ground_vm takes a trace option)");
  for (vm = mk_proc_vm(p); mk_vm_parent(vm) != NULL; vm = mk_vm_parent(vm)) {}
  lua_settop(L, 1);
  return settrace(L, vm);
}

/* mkl_trace's protected half: (vm, opts). */
static int p_trace(lua_State *L) {
  mk_vm *vm = lua_touserdata(L, 1);
  lua_remove(L, 1);
  return settrace(L, vm);
}

const char *mkl_trace(lua_State *L, mk_vm *vm, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, p_trace);
  lua_pushlightuserdata(L, vm);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) return lua_tostring(L, -1);
  if (lua_isnil(L, -2)) return lua_tostring(L, -1);
  lua_pop(L, 2);
  return NULL;
}

/* ---- rings ----------------------------------------------------------------- */

/* A ring's userdata: the ring, NULL once closed. */
typedef struct ringbox { mk_ring *r; } ringbox;

#define RING_MT "market.ring"
#define RING_SIZE 100       /* lines, when size is left out */

static ringbox *checkring(lua_State *L) {
  ringbox *b = luaL_checkudata(L, 1, RING_MT);
  if (b->r == NULL) luaL_error(L, "market.ring: the ring is closed");
  return b;
}

static void addline(void *ud, const char *line) {
  lua_State *L = ud;
  lua_pushstring(L, line);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* ring:read() -> {lines since the last read}, how many were dropped */
static int ring_read(lua_State *L) {
  ringbox *b = checkring(L);
  size_t dropped;
  lua_newtable(L);
  dropped = mk_ring_read(b->r, addline, L);
  lua_pushinteger(L, (lua_Integer)dropped);
  return 2;
}

static int ring_close(lua_State *L) {
  ringbox *b = luaL_checkudata(L, 1, RING_MT);
  mk_ring_close(b->r);
  b->r = NULL;
  return 0;
}

static int ring_tostring(lua_State *L) {
  ringbox *b = luaL_checkudata(L, 1, RING_MT);
  lua_pushfstring(L, "market.ring (%s)", b->r ? "open" : "closed");
  return 1;
}

/* Set the rings' metatable on the value at the top.  Made by the first
** ring, not when market loads: one more key in the registry changes where
** its integer keys (luaL_ref's, several looked up per message) fall, and
** a program that opens no ring counted 28 instructions more per message
** (bench-callgrind) for it. */
static void ringmeta(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"read", ring_read}, {"close", ring_close}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", ring_close}, {"__close", ring_close}, {"__tostring", ring_tostring},
    {NULL, NULL}};
  if (luaL_newmetatable(L, RING_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
}

/* core.ring{pid =, name =, vm =, kind =, topic =, size =} -> ring */
static int l_ring(lua_State *L) {
  static const char *const fields[] = {"pid", "name", "vm", "kind", "topic", "size", NULL};
  mk_ground *g = mkl_ground(L);
  mk_trace_opts o;
  lua_Integer size;
  int isint, t;
  ringbox *b;
  /* Its own message: luaL_checktype's named 'ring' alone, where it is a
  ** field. */
  if (!lua_istable(L, 1))
    return luaL_error(L, "market.ring: expected a table of options, got %s", luaL_typename(L, 1));
  lua_settop(L, 1);
  luaL_checkstack(L, 32, "market.ring");
  if (g == NULL) return luaL_error(L, "market.ring: no ground VM is running");
  memset(&o, 0, sizeof o);
  mkl_only_fields(L, "market.ring", fields, "pid, name, vm, kind, topic, size");
  filter(L, "market.ring", &o);
  if ((t = lua_getfield(L, 1, "size")) == LUA_TNIL) size = RING_SIZE, isint = 1;
  else size = lua_tointegerx(L, -1, &isint);
  /* A number: "5" is no size. */
  if (!isint || (t != LUA_TNIL && t != LUA_TNUMBER) || size < 1 ||
      (lua_Unsigned)size > (lua_Unsigned)INT32_MAX)
    return luaL_error(L, "market.ring: size must be a number of lines from 1 to %d, got %s",
                      INT32_MAX, luaL_tolstring(L, -1, NULL));
  b = lua_newuserdatauv(L, sizeof *b, 0);
  b->r = NULL;
  ringmeta(L);
  if (lua_getfield(L, 1, "topic") != LUA_TNIL)
    o.topic = mkl_checkterm(L, -1, "market.ring: topic");     /* last: nothing raises after it */
  lua_pop(L, 1);
  b->r = mk_vm_ring_open(mk_ground_vm(g), &o, (size_t)size);
  mk_unref(o.topic);
  if (b->r == NULL) return luaL_error(L, "not enough memory");
  return 1;
}

void mkl_open_trace(lua_State *L) {
  lua_pushcfunction(L, l_trace);
  lua_setfield(L, -2, "trace");
  lua_pushcfunction(L, l_ring);
  lua_setfield(L, -2, "ring");
}
