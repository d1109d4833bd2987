/*
** lsnap.c: market.snapshot's C half (the VM tree as Lua tables, from
** mk_vm_snapshot) and the JSON encoding of a snapshot (docs/inspect.md,
** "Snapshots").
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkl.h"

/* ---- the VM tree as tables ------------------------------------------------ */

static void setint(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void setstr(lua_State *L, const char *k, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* {pid =, endpoint =} for one side of a conversation. */
static void pushside(lua_State *L, const mk_snap_vm *s, size_t proc, size_t ep) {
  lua_createtable(L, 0, 2);
  setint(L, "pid", (lua_Integer)s->procs[proc].pid);
  setstr(L, "endpoint", s->procs[proc].endpoints[ep].name);
}

static void pushvm(lua_State *L, const mk_snap_vm *s) {
  size_t i, k;
  luaL_checkstack(L, 8, "market.snapshot: VMs nested too deep");
  lua_createtable(L, 0, 5);
  setstr(L, "path", s->path);
  setint(L, "pid", (lua_Integer)s->pid);
  setint(L, "queued", (lua_Integer)s->queued);
  lua_createtable(L, (int)s->nprocs, 0);
  for (i = 0; i < s->nprocs; i++) {
    const mk_snap_proc *p = &s->procs[i];
    lua_createtable(L, 0, 7);
    setint(L, "pid", (lua_Integer)p->pid);
    setstr(L, "name", p->name);
    setstr(L, "kind", p->kind);
    setint(L, "queued", (lua_Integer)p->queued);
    if (p->activations >= 0) setint(L, "activations", (lua_Integer)p->activations);
    lua_createtable(L, (int)p->nendpoints, 0);
    for (k = 0; k < p->nendpoints; k++) {
      const mk_snap_endpoint *e = &p->endpoints[k];
      lua_createtable(L, 0, 5);
      setstr(L, "name", e->name);
      setint(L, "level", e->level);
      setstr(L, "orientation", mk_orientation_name(e->role.orientation));
      setstr(L, "interest", mk_interest_name(e->role.interest));
      mkl_pushterm(L, e->role.topic);
      lua_setfield(L, -2, "topic");
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "endpoints");
    if (p->vm != NULL) {
      pushvm(L, p->vm);
      lua_setfield(L, -2, "vm");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "processes");
  lua_createtable(L, (int)s->nconvs, 0);
  for (i = 0; i < s->nconvs; i++) {
    const mk_snap_conv *c = &s->convs[i];
    lua_createtable(L, 0, 2);
    pushside(L, s, c->pub_proc, c->pub_endpoint);
    lua_setfield(L, -2, "publisher");
    pushside(L, s, c->sub_proc, c->sub_endpoint);
    lua_setfield(L, -2, "subscriber");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "conversations");
}

/* The drivers whose modules, when loaded, may give their resources
** (an inspect() function) to a snapshot. */
static const char *const drivers[] = { "timer", "tcp", "udp", NULL };

/* core.snapshot() -> {time =, vm =, drivers =} (docs/inspect.md). */
static int c_snapshot(lua_State *L) {
  mk_ground *g = mkl_ground(L);
  mk_snap_vm *s, **box;
  int i;
  if (g == NULL) return luaL_error(L, "market.snapshot: no ground VM is running");
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, mk_ground_now(g));
  lua_setfield(L, -2, "time");
  s = mk_vm_snapshot(mk_ground_vm(g));
  /* Making the tables may raise (out of memory): s is held meanwhile by a
  ** userdata whose __gc frees it. */
  box = lua_newuserdatauv(L, sizeof s, 0);
  *box = s;
  luaL_setmetatable(L, "market.snapshot");
  pushvm(L, s);
  mk_snapshot_free(s);
  *box = NULL;
  lua_setfield(L, -3, "vm");
  lua_pop(L, 1);                              /* box */
  /* A driver's inspect() is Lua of its own: its errors are its caller's. */
  lua_createtable(L, 0, 3);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  for (i = 0; drivers[i]; i++) {
    lua_pushfstring(L, "market.%s", drivers[i]);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      if (lua_getfield(L, -1, "inspect") == LUA_TFUNCTION) {
        lua_call(L, 0, 1);
        lua_setfield(L, -4, drivers[i]);
      } else {
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);                              /* package.loaded */
  lua_setfield(L, -2, "drivers");
  return 1;
}

static int snap_gc(lua_State *L) {
  mk_snap_vm **s = lua_touserdata(L, 1);
  mk_snapshot_free(*s);
  *s = NULL;
  return 0;
}

/* ---- JSON ------------------------------------------------------------------ */

#define JSON_DEPTH 200      /* Lua tables nested deeper are refused (cycles too) */

/* The text being made, malloc'd, in a userdata whose __gc frees it, so an
** error half-way loses nothing (luaL_Buffer wants the stack balanced
** between its calls, which a walk of nested tables is not). */
typedef struct jbuf {
  char *p;
  size_t n, cap;
} jbuf;

static void jadd(lua_State *L, jbuf *b, const char *s, size_t n) {
  if (b->cap - b->n < n) {
    size_t cap = b->cap ? b->cap : 256;
    char *p;
    while (cap - b->n < n) cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL) luaL_error(L, "not enough memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

#define jlit(L, b, s) jadd(L, b, "" s, sizeof(s) - 1)
#define jstr(L, b, s) jadd(L, b, s, strlen(s))
static void jchar(lua_State *L, jbuf *b, char c) { jadd(L, b, &c, 1); }

static int jbuf_gc(lua_State *L) {
  jbuf *b = lua_touserdata(L, 1);
  free(b->p);
  b->p = NULL;
  return 0;
}

/* The length of the UTF-8 sequence at s (n bytes left), or 0 when it is
** not one (overlong, a surrogate, past U+10FFFF, cut short). */
static size_t utf8len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len, k;
  unsigned long cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
  else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
  else return 0;
  if (len > n) return 0;
  for (k = 1; k < len; k++) {
    if ((s[k] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[k] & 0x3F);
  }
  if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
      (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0;
  return len;
}

/* A JSON string: ", \ and control characters escaped, as a trace's JSON
** lines write them (runtime/trace.c).  Bytes that are not UTF-8 become
** U+FFFD when `lax`; otherwise returns 0 at the first one, having
** written part of it. */
static int addjstr(lua_State *L, jbuf *b, const char *str, size_t n, int lax) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0, len;
  char esc[8];
  jchar(L, b, '"');
  while (i < n) {
    unsigned c = s[i];
    switch (c) {
      case '"': jlit(L, b, "\\\""); i++; continue;
      case '\\': jlit(L, b, "\\\\"); i++; continue;
      case '\n': jlit(L, b, "\\n"); i++; continue;
      case '\r': jlit(L, b, "\\r"); i++; continue;
      case '\t': jlit(L, b, "\\t"); i++; continue;
      default: break;
    }
    if (c < 0x20 || c == 0x7F) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      jstr(L, b, esc);
      i++;
    } else if ((len = utf8len(s + i, n - i)) == 0) {
      if (!lax) return 0;
      jlit(L, b, "\\ufffd");
      i++;
    } else {
      jadd(L, b, str + i, len);
      i += len;
    }
  }
  jchar(L, b, '"');
  return 1;
}

/* Floats as a trace's JSON lines write them. */
static void addfloat(lua_State *L, jbuf *b, double f) {
  char num[40];
  if (isnan(f)) jlit(L, b, "{\"float\":\"nan\"}");
  else if (isinf(f)) jstr(L, b, f > 0 ? "{\"float\":\"inf\"}" : "{\"float\":\"-inf\"}");
  else {
    snprintf(num, sizeof num, "%.17g", f);
    jstr(L, b, num);
  }
}

static void addint(lua_State *L, jbuf *b, long long i) {
  char num[32];
  snprintf(num, sizeof num, "%lld", i);
  jstr(L, b, num);
}

/* A term: the mapping of docs/inspect.md ("Terms in JSON"). */
static void addterm(lua_State *L, jbuf *b, const mk_term *t) {
  uint32_t i;
  switch ((mk_kind)t->kind) {
    case MK_NIL: jlit(L, b, "null"); break;
    case MK_FALSE: jlit(L, b, "false"); break;
    case MK_TRUE: jlit(L, b, "true"); break;
    case MK_INT: addint(L, b, (long long)t->v.i); break;
    case MK_FLOAT: addfloat(L, b, t->v.f); break;
    case MK_STR: {
      static const char hex[] = "0123456789abcdef";
      const char *bytes = mk_tostring(t, NULL);
      size_t mark = b->n;
      if (addjstr(L, b, bytes, t->n, 0)) break;
      b->n = mark;                   /* not UTF-8: its bytes in hex */
      jlit(L, b, "{\"bytes\":\"");
      for (i = 0; i < t->n; i++) {
        unsigned char c = (unsigned char)bytes[i];
        char h[2] = {hex[c >> 4], hex[c & 15]};
        jadd(L, b, h, 2);
      }
      jlit(L, b, "\"}");
      break;
    }
    case MK_WILD: jstr(L, b, "{\"wildcard\":true}"); break;
    case MK_EOF: jstr(L, b, "{\"eof\":true}"); break;
    case MK_REC:
      jstr(L, b, "{\"record\":");
      addjstr(L, b, t->v.rt->label, t->v.rt->labellen, 1);
      jstr(L, b, ",\"fields\":[");
      for (i = 0; i < t->n; i++) {
        if (i) jchar(L, b, ',');
        addterm(L, b, mk_items(t)[i]);
      }
      jlit(L, b, "]}");
      break;
    case MK_SEQ:
      jchar(L, b, '[');
      for (i = 0; i < t->n; i++) {
        if (i) jchar(L, b, ',');
        addterm(L, b, mk_items(t)[i]);
      }
      jchar(L, b, ']');
      break;
  }
}

static int keycmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void addvalue(lua_State *L, jbuf *b, int idx, int depth);

/* A table: an array when its keys are 1..#t (an empty table too), else
** an object of its string keys, sorted (other keys are an error). */
static void addtable(lua_State *L, jbuf *b, int idx, int depth) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0, i;
  const char **keys;
  if (depth >= JSON_DEPTH) luaL_error(L, "market.snapshot_json: tables nested too deep (a cycle?)");
  luaL_checkstack(L, 4, "market.snapshot_json");
  lua_pushnil(L);
  while (lua_next(L, idx)) { count++; lua_pop(L, 1); }
  if (count == n) {
    jchar(L, b, '[');
    for (i = 1; i <= n; i++) {
      if (i > 1) jchar(L, b, ',');
      lua_rawgeti(L, idx, i);
      addvalue(L, b, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
    }
    jchar(L, b, ']');
    return;
  }
  /* The keys' strings stay anchored by the table itself meanwhile. */
  keys = lua_newuserdatauv(L, (size_t)count * sizeof *keys, 0);
  i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "market.snapshot_json: a table mixes keys that are not strings");
    keys[i++] = lua_tostring(L, -1);
  }
  qsort(keys, (size_t)count, sizeof *keys, keycmp);
  jchar(L, b, '{');
  for (i = 0; i < count; i++) {
    if (i) jchar(L, b, ',');
    addjstr(L, b, keys[i], strlen(keys[i]), 1);
    jchar(L, b, ':');
    lua_getfield(L, idx, keys[i]);
    addvalue(L, b, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  jchar(L, b, '}');
  lua_pop(L, 1);                  /* keys */
}

static void addvalue(lua_State *L, jbuf *b, int idx, int depth) {
  const char *s;
  size_t n;
  mk_term *t;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: jlit(L, b, "null"); break;
    case LUA_TBOOLEAN: jstr(L, b, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) addint(L, b, (long long)lua_tointeger(L, idx));
      else addfloat(L, b, (double)lua_tonumber(L, idx));
      break;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &n);
      addjstr(L, b, s, n, 1);
      break;
    case LUA_TTABLE: addtable(L, b, idx, depth); break;
    default:
      if ((t = mkl_testbox(L, idx)) != NULL) { addterm(L, b, t); break; }
      luaL_error(L, "market.snapshot_json: cannot encode a %s", luaL_typename(L, idx));
  }
}

/* core.snapshot_json([snap]) -> snap (default: a snapshot now) as JSON. */
static int c_snapshot_json(lua_State *L) {
  jbuf *b;
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    c_snapshot(L);
  } else if (!lua_istable(L, 1)) {
    return luaL_error(L, "market.snapshot_json: a snapshot table expected, got %s",
                      luaL_typename(L, 1));
  }
  lua_settop(L, 1);
  b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, "market.json");
  addvalue(L, b, 1, 0);
  lua_pushlstring(L, b->p ? b->p : "", b->n);
  return 1;
}

void mkl_open_snapshot(lua_State *L) {
  if (luaL_newmetatable(L, "market.snapshot")) {
    lua_pushcfunction(L, snap_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, "market.json")) {
    lua_pushcfunction(L, jbuf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, c_snapshot);
  lua_setfield(L, -2, "snapshot");
  lua_pushcfunction(L, c_snapshot_json);
  lua_setfield(L, -2, "snapshot_json");
}
