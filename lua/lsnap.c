/*
** lsnap.c: market.snapshot's C half (the VM tree as Lua tables, from
** mk_vm_snapshot) and the JSON encoding of a snapshot (docs/inspect.md,
** "Snapshots").
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "mkl.h"
#include "pool.h"

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
    if (s->detail) {
      lua_pushnumber(L, p->cpu_ms);
      lua_setfield(L, -2, "cpu_ms");
      setint(L, "memory", (lua_Integer)p->memory);
    }
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
    if (p->endpoints_omitted > 0) setint(L, "endpoints_omitted", (lua_Integer)p->endpoints_omitted);
    if (p->vm != NULL) {
      pushvm(L, p->vm);
      lua_setfield(L, -2, "vm");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "processes");
  if (s->omitted > 0) setint(L, "omitted", (lua_Integer)s->omitted);
  lua_createtable(L, (int)s->nconvs, 0);
  for (i = 0; i < s->nconvs; i++) {
    const mk_snap_conv *c = &s->convs[i];
    lua_createtable(L, 0, 2);
    pushside(L, s, c->pub_proc, c->pub_endpoint);
    lua_setfield(L, -2, "publisher");
    pushside(L, s, c->sub_proc, c->sub_endpoint);
    lua_setfield(L, -2, "subscriber");
    if (s->detail) setint(L, "messages", (lua_Integer)c->messages);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "conversations");
  if (s->convs_omitted > 0) setint(L, "conversations_omitted", (lua_Integer)s->convs_omitted);
}

/* The drivers whose modules, when loaded, may give their resources
** (an inspect() function) to a snapshot. */
static const char *const drivers[] = { "timer", "tcp", "udp", "cluster", NULL };

/* An integer field of the options at 1 above 0, or 0 when it is nil. */
static lua_Integer positive(lua_State *L, const char *field) {
  lua_Integer n;
  lua_getfield(L, 1, field);
  n = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
  if (!lua_isnil(L, -1) && n < 1)
    return luaL_error(L, "market.snapshot: %s must be an integer above 0", field);
  lua_pop(L, 1);
  return n;
}

/* core.snapshot([{max_processes = n, max_conversations = m,
** max_endpoints = e}]) -> {time =, memory =, vm =, drivers =}
** (docs/inspect.md); with n, at most n processes (mk_vm_snapshot_bounded),
** and each driver's inspect(n) lists as much; with m, at most m
** conversations; with e, at most e endpoints. */
static int c_snapshot(lua_State *L) {
  mk_ground *g = mkl_ground(L);
  mk_snap_vm *s, **box;
  lua_Integer max = 0, maxconvs = 0, maxeps = 0;
  int i;
  if (!lua_isnoneornil(L, 1)) {
    static const char *const fields[] = { "max_processes", "max_conversations", "max_endpoints",
                                          NULL };
    luaL_checktype(L, 1, LUA_TTABLE);
    mkl_only_fields(L, "market.snapshot", fields,
                    "max_processes, max_conversations, max_endpoints");
    max = positive(L, "max_processes");
    maxconvs = positive(L, "max_conversations");
    maxeps = positive(L, "max_endpoints");
    lua_settop(L, 0);
  }
  if (g == NULL) return luaL_error(L, "market.snapshot: no ground VM is running");
  lua_createtable(L, 0, 4);
  lua_pushnumber(L, mk_ground_now(g));
  lua_setfield(L, -2, "time");
  /* The memory limit's count, and the limit (pool.h; docs/limits.md) */
  lua_createtable(L, 0, 2);
  setint(L, "used", (lua_Integer)mk_pool_used());
  if (mk_pool_limit() != 0) setint(L, "limit", (lua_Integer)mk_pool_limit());
  lua_setfield(L, -2, "memory");
  s = mk_vm_snapshot_bounded(mk_ground_vm(g), (size_t)max, (size_t)maxconvs, (size_t)maxeps);
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
        if (max > 0) lua_pushinteger(L, max); else lua_pushnil(L);
        lua_call(L, 1, 1);
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

/* Lua tables nested deeper are refused (cycles too).  A snapshot holds
** topics as deep as the term depth limit allows (at most
** MK_TERM_DEPTH_MAX), inside a few levels of its own: below that, a
** legal topic made the whole snapshot an error.  A level of the walk
** takes some 100 bytes of C stack. */
#define JSON_DEPTH (MK_TERM_DEPTH_MAX + 64)

/* The text being made (json.h), in a userdata whose __gc frees it, so
** an error half-way loses nothing (luaL_Buffer wants the stack balanced
** between its calls, which a walk of nested tables is not).  Out of
** memory raises. */
static void jcheck(lua_State *L, const mk_jbuf *b) {
  if (b->oom) luaL_error(L, "not enough memory");
}

#define jlit(L, b, s) (mk_jbuf_add(b, "" s, sizeof(s) - 1), jcheck(L, b))
#define jchar(L, b, c) (mk_jbuf_add(b, &(char){c}, 1), jcheck(L, b))
#define jstr(L, b, s, n) (mk_json_str(b, s, n, 1), jcheck(L, b))

static int jbuf_gc(lua_State *L) {
  mk_jbuf *b = lua_touserdata(L, 1);
  free(b->p);
  b->p = NULL;
  return 0;
}

/* An object's key: its bytes and length, as a key may hold a NUL. */
typedef struct jkey {
  const char *s;
  size_t n;
} jkey;

static int keycmp(const void *a, const void *b) {
  const jkey *x = a, *y = b;
  int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
  return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

static void addvalue(lua_State *L, mk_jbuf *b, int idx, int depth);

/* An endpoint's topic (the value at idx under the key "topic"): a term
** written as one, so a string in it that is not UTF-8 comes out as its
** bytes ({"bytes": hex}) and not with U+FFFD for them, as the snapshot's
** own strings do; a value that is no term as any other. */
static void addtopic(lua_State *L, mk_jbuf *b, int idx, int depth) {
  const char *err;
  mk_term *const *slot = mkl_boxslot(L, idx);
  mk_term *t;
  /* A term's box as it is: one past a size limit lowered since it was
  ** made is still read and printed (docs/terms.md), and taken through
  ** mkl_toterm it failed the whole snapshot ("cannot encode a userdata"). */
  if (slot != NULL && *slot != NULL) {
    mk_json_term(b, *slot, SIZE_MAX);
    jcheck(L, b);
    return;
  }
  t = mkl_toterm(L, idx, &err);
  if (t == NULL) {
    addvalue(L, b, idx, depth);
    return;
  }
  mk_json_term(b, t, SIZE_MAX);
  mk_unref(t);
  jcheck(L, b);
}

/* A table: an array when its keys are 1..#t (an empty table too), else
** an object of its string keys, sorted (other keys are an error). */
static void addtable(lua_State *L, mk_jbuf *b, int idx, int depth) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0, i;
  jkey *keys;
  if (depth >= JSON_DEPTH)
    luaL_error(L, "market.snapshot_json: tables nested more than %d levels deep (a cycle?)",
               JSON_DEPTH);
  luaL_checkstack(L, 5, "market.snapshot_json");
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
  /* Any allocation may run a finalizer, and one may change the table:
  ** the keys are counted again as they are taken (no allocation between:
  ** the anchor's array part is made to size), and kept by an anchor of
  ** their own, not by the table, which may drop them meanwhile. */
  keys = lua_newuserdatauv(L, (size_t)count * sizeof *keys, 0);
  lua_createtable(L, (int)count, 0);
  i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "market.snapshot_json: a table mixes keys that are not strings");
    if (i == count) luaL_error(L, "market.snapshot_json: a table changed while it was written");
    keys[i].s = lua_tolstring(L, -1, &keys[i].n);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, ++i);
  }
  count = i;
  qsort(keys, (size_t)count, sizeof *keys, keycmp);
  jchar(L, b, '{');
  for (i = 0; i < count; i++) {
    if (i) jchar(L, b, ',');
    jstr(L, b, keys[i].s, keys[i].n);
    jchar(L, b, ':');
    /* By length and raw: a key "a\0b" is not "a", nor a way into __index. */
    lua_pushlstring(L, keys[i].s, keys[i].n);
    lua_rawget(L, idx);
    if (keys[i].n == 5 && memcmp(keys[i].s, "topic", 5) == 0)
      addtopic(L, b, lua_gettop(L), depth + 1);
    else
      addvalue(L, b, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  jchar(L, b, '}');
  lua_pop(L, 2);                  /* keys, their anchor */
}

static void addvalue(lua_State *L, mk_jbuf *b, int idx, int depth) {
  const char *s;
  size_t n;
  mk_term *t;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: jlit(L, b, "null"); break;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) jlit(L, b, "true"); else jlit(L, b, "false");
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) mk_json_int(b, (long long)lua_tointeger(L, idx));
      else mk_json_float(b, (double)lua_tonumber(L, idx));
      jcheck(L, b);
      break;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &n);
      jstr(L, b, s, n);
      break;
    case LUA_TTABLE: addtable(L, b, idx, depth); break;
    default:
      if ((t = mkl_testbox(L, idx)) != NULL) {
        mk_json_term(b, t, SIZE_MAX);
        jcheck(L, b);
        break;
      }
      luaL_error(L, "market.snapshot_json: cannot encode a %s", luaL_typename(L, idx));
  }
}

/* core.snapshot_json([snap]) -> snap (default: a snapshot now) as JSON. */
static int c_snapshot_json(lua_State *L) {
  mk_jbuf *b;
  if (lua_isnoneornil(L, 1)) {
    if (mkl_ground(L) == NULL) return luaL_error(L, "market.snapshot_json: no ground VM is running");
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

/* ---- detail mode ---------------------------------------------------------- */

/* While detail is on, the state's allocator is wrapped to tell the VM
** what each activation allocates (mk_detail_alloc).  The wrapped one is
** kept in malloc'd memory (the box), not Lua's: lua_close frees the main
** thread's block last, after the box's userdata is collected, whose __gc
** puts the wrapped allocator back first. */
typedef struct allocbox {
  lua_Alloc f;
  void *ud;
} allocbox;

static const char key_alloc = 0;

static void *counted_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  const allocbox *b = ud;
  void *r = b->f(b->ud, ptr, osize, nsize);
  if (r != NULL || nsize == 0)
    mk_detail_alloc((ptrdiff_t)nsize - (ptr != NULL ? (ptrdiff_t)osize : 0));
  return r;
}

static int allocbox_gc(lua_State *L) {
  allocbox **b = lua_touserdata(L, 1);
  void *ud;
  if (*b == NULL) return 0;
  if (lua_getallocf(L, &ud) == counted_alloc && ud == *b) lua_setallocf(L, (*b)->f, (*b)->ud);
  free(*b);
  *b = NULL;
  return 0;
}

/* The state's box, or NULL when none was made yet. */
static allocbox *findbox(lua_State *L) {
  allocbox *b = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_alloc) == LUA_TUSERDATA)
    b = *(allocbox **)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return b;
}

/* The state's box, made (unwrapped) the first time. */
static allocbox *getbox(lua_State *L) {
  allocbox **b;
  allocbox *found = findbox(L);
  if (found != NULL) return found;
  b = lua_newuserdatauv(L, sizeof *b, 0);
  *b = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, allocbox_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  if ((*b = malloc(sizeof **b)) == NULL) luaL_error(L, "not enough memory");
  (*b)->f = lua_getallocf(L, &(*b)->ud);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_alloc);
  return *b;
}

int mkl_set_detail(lua_State *L, int on) {
  mk_ground *g = mkl_ground(L);
  allocbox *b;
  void *ud;
  int was, wrapped;
  if (g == NULL) return luaL_error(L, "market.inspect_detail: no ground VM is running");
  b = getbox(L);
  wrapped = lua_getallocf(L, &ud) == counted_alloc && ud == b;
  was = mk_vm_set_detail(mk_ground_vm(g), on);
  if (on && !wrapped) {
    /* What to wrap is the allocator of now: the one of an earlier ground
    ** VM may be gone (mkl_attach's cache of freed blocks is per VM). */
    b->f = lua_getallocf(L, &b->ud);
    lua_setallocf(L, counted_alloc, b);
  } else if (!on && wrapped) {
    lua_setallocf(L, b->f, b->ud);
  }
  return was;
}

/* The ground VM is ending (mkl_detach): the wrapper goes first, so that
** the allocator under it is again the state's own. */
void mkl_unwrap_detail(lua_State *L) {
  allocbox *b = findbox(L);
  void *ud;
  if (b != NULL && lua_getallocf(L, &ud) == counted_alloc && ud == b) lua_setallocf(L, b->f, b->ud);
}

/* core.inspect_detail([on]) -> the setting before (docs/inspect.md). */
static int c_inspect_detail(lua_State *L) {
  mk_ground *g = mkl_ground(L);
  if (lua_isnoneornil(L, 1)) {
    lua_pushboolean(L, g != NULL && mk_vm_detail(mk_ground_vm(g)));
    return 1;
  }
  /* Its own message: luaL_checktype's named 'inspect_detail' alone. */
  if (!lua_isboolean(L, 1))
    return luaL_error(L, "market.inspect_detail: on must be true or false, got %s",
                      luaL_typename(L, 1));
  lua_pushboolean(L, mkl_set_detail(L, lua_toboolean(L, 1)));
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
  lua_pushcfunction(L, c_inspect_detail);
  lua_setfield(L, -2, "inspect_detail");
}
