/*
** lterm.c: terms in Lua.
**
** nil, booleans, numbers and strings are themselves; sequences are Lua
** arrays (converted each way); records, the wildcard and EOF are full
** userdata "boxes" holding a term reference, sharing one metatable.  Record
** types are userdata too: callable constructors.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkl.h"
#include "pool.h"

/*
** A box, or a record type's box, is a full userdata whose block holds its
** pointer and then a brand (mkl_branded): the address of a static of this
** file.
** Boxes are checked several times per message, and comparing metatables
** (lua_getmetatable, lua_rawequal, lua_pop, after a registry lookup when no
** upvalue held the metatable) was a tenth of a Lua process's instructions
** per message.  The brand is as sure: Lua code cannot write into a
** userdata's block, a userdata of another size is turned away before its
** block is read (lua_rawlen; a light userdata has none), and only C code
** could forge one.  It is surer than the metatable, which the debug library
** can give to any userdata: a foreign one of the same size then passed.
*/
static const char box_brand = 0, rtbox_brand = 0;

typedef struct box { mk_term *t; const char *brand; } box;
typedef struct rtbox { mk_rtype *rt; const char *brand; } rtbox;

static const char key_wild = 0, key_eof = 0;
/* The box metatable again, under a light-userdata key: pushbox sets it
** on every box made outside the metamethods (which have it as upvalue). */
static const char key_box_mt = 0;

/* The box at idx, or NULL. */
static box *boxat(lua_State *L, int idx) {
  return mkl_branded(L, idx, sizeof(box), &box_brand);
}

/* The same, holding a term: a box whose __gc has run (called by hand
** through the debug library) is no term any more. */
static box *tobox(lua_State *L, int idx) {
  box *b = boxat(L, idx);
  return b != NULL && b->t != NULL ? b : NULL;
}

/*
** Is t small enough to be given to market from Lua?  A box may hold a
** term larger than the size limit: a unifier (term.h, mk_unify), or a term
** made before the limit was lowered.  It may be read, printed and compared,
** but it is refused as a topic, a message, a reason or a part of a new
** term, as a table that large would be: otherwise unifiers of unifiers
** could grow without bound.
*/
static int fits(const mk_term *t) {
  return mk_term_size(t) <= mk_term_size_limit();
}

mk_term *mkl_testbox(lua_State *L, int idx) {
  box *b = tobox(L, idx);
  return b && fits(b->t) ? b->t : NULL;
}

mk_term *const *mkl_boxslot(lua_State *L, int idx) {
  box *b = boxat(L, idx);
  return b ? &b->t : NULL;
}

/* Push a box for t (stolen).  mt: a stack index holding the box
** metatable, or 0 to fetch it from the registry. */
static void pushbox(lua_State *L, mk_term *t, int mt) {
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = t;
  b->brand = &box_brand;
  if (mt == 0) lua_rawgetp(L, LUA_REGISTRYINDEX, &key_box_mt);
  else lua_pushvalue(L, mt);
  lua_setmetatable(L, -2);
}

void mkl_pushbox(lua_State *L, mk_term *t) {
  pushbox(L, t, 0);
}

/*
** Byte strings cross between Lua and terms by copy: a Lua string is a
** term's bytes copied into Lua's heap, and a term made from a Lua string
** copies, and hashes, all of its bytes again.  A handler that forwards
** what it read (an echo: send(channel(here, remote, m.subpacket))) would
** copy every payload twice per trip.  So the string terms last pushed to
** Lua, or made from Lua strings, are remembered by the address of the Lua
** string's bytes, and a conversion of the same bytes takes a reference
** instead of a copy.  The address is only a hint (a collected string's
** may be reused): a hit also compares the bytes, which costs less than
** the copy and the hash it saves, and makes the cache right whatever Lua
** state the string lives in.  But comparing 4 KiB cost more than copying
** them, so a string longer than MK_POOL_MAX bytes in a state whose
** allocator is mk_pool_lalloc is taken as itself without reading it while
** that allocator has freed or moved no such block since the string was
** seen (mk_pool_lfrees): its block, and so its bytes, cannot have been
** reused meanwhile.  Strings above STRSEEN_MAX bytes are not
** kept, so the cache holds at most STRSEEN * STRSEEN_MAX bytes; it lets
** them go when the last Lua state with market open closes
** (mkl_forget_strings).
*/
#define STRSEEN 16
#define STRSEEN_MAX 65536

static struct {
  const char *s;
  mk_term *t;               /* owned */
  int sure;                 /* s was a pool-allocated long string ... */
  unsigned long frees;      /* ... and mk_pool_lfrees() was this then */
} strseen[STRSEEN];

static unsigned strslot(const char *s) {
  uintptr_t a = (uintptr_t)s;
  return (unsigned)((a >> 4) ^ (a >> 9)) % STRSEEN;
}

/* The Lua string s, in L, has t's bytes. */
static void seen(lua_State *L, const char *s, mk_term *t) {
  unsigned i;
  if (t->n > STRSEEN_MAX) return;
  i = strslot(s);
  if (strseen[i].t != t) {
    mk_unref(strseen[i].t);
    strseen[i].t = mk_ref(t);
  }
  strseen[i].s = s;
  strseen[i].sure = t->n > MK_POOL_MAX && lua_getallocf(L, NULL) == mk_pool_lalloc;
  strseen[i].frees = mk_pool_lfrees();
}

/* The term for the Lua string s of n bytes, in L: a new reference. */
static mk_term *strterm(lua_State *L, const char *s, size_t n) {
  unsigned i = strslot(s);
  mk_term *t = strseen[i].t;
  if (strseen[i].s == s && t != NULL && t->n == n &&
      ((strseen[i].sure && strseen[i].frees == mk_pool_lfrees()) ||
       memcmp(mk_strdata(t), s, n) == 0))
    return mk_ref(t);
  t = mk_str(s, n);
  if (t != NULL) seen(L, s, t);
  return t;
}

void mkl_forget_strings(void) {
  unsigned i;
  for (i = 0; i < STRSEEN; i++) {
    mk_unref(strseen[i].t);
    strseen[i].t = NULL;
    strseen[i].s = NULL;
    strseen[i].sure = 0;
  }
}

/*
** The error for a term deeper than the limit (term.h, "Depth"), with the
** limit in force.  The buffer outlives the call, as *err must: terms are
** single-threaded, and every caller uses *err before converting again.
*/
static const char *toodeep(const char *what, const char *why) {
  static char msg[96];
  size_t limit = mk_term_depth_limit();
  snprintf(msg, sizeof msg, "%s nested more than %zu level%s deep%s", what, limit,
           limit == 1 ? "" : "s", why);
  return msg;
}

static const char *deepterm(void) { return toodeep("a term", ""); }

/* The error for a term larger than the size limit (term.h, "Size"); the
** buffer as for toodeep, and a caller may compare *err with it. */
static char toolarge_msg[64];

static const char *toolarge(void) {
  size_t limit = mk_term_size_limit();
  snprintf(toolarge_msg, sizeof toolarge_msg, "a term of more than %zu node%s", limit,
           limit == 1 ? "" : "s");
  return toolarge_msg;
}

static mk_term *toterm(lua_State *L, int idx, const char **err, size_t depth,
                       size_t room);

static const char NOTSEQ[] =
  "a table with non-sequence keys is not a term (sequences are arrays 1..n)";
static const char HOLES[] = "a table with holes is not a term";

/* The items from i + 1 to n of the table at idx into s, in order, as
** toterm converts them; `size` is s's size so far, at most room.  0, or
** -1 with *err set. */
static int items(lua_State *L, int idx, const char **err, size_t depth, size_t room,
                 mk_term *s, lua_Unsigned i, lua_Unsigned n, size_t size) {
  for (; i < n; i++) {
    mk_term *item;
    lua_rawgeti(L, idx, (lua_Integer)i + 1);
    /* item i may take the room the others leave it */
    item = toterm(L, lua_gettop(L), err, depth + 1, room - size + 1);
    lua_pop(L, 1);
    if (item == NULL) return -1;
    size += mk_term_size(item) - 1;   /* still at most room */
    mk_set(s, (uint32_t)i, item);
  }
  return 0;
}

/*
** A table: a sequence of n items.  Its keys must be 1..n, all of them,
** and that is checked before any item is said to be wrong: one pass of
** lua_next over the keys, which converts the values too while the keys
** come in order (an array's do), and stops converting at the first item
** that fails, whose reason is given once the keys are known to be right.
** Keys out of order (integers in the table's hash part) leave the rest to
** be converted in order after the pass (items), so the item whose reason
** is given is the first wrong one in 1..n, with the room the items before
** it left, whatever the table's layout.  A table too long for a sequence
** or for the room is checked the same way, without converting anything.
*/
static mk_term *totable(lua_State *L, int idx, const char **err, size_t depth,
                        size_t room) {
  lua_Unsigned n = lua_rawlen(L, idx), keys = 0, at = 0;
  size_t size = 1 + (size_t)n;    /* at least: the sequence and n items */
  const char *itemerr = NULL;
  int convert;
  mk_term *s = NULL;
  if (depth >= mk_term_depth_limit()) {
    *err = toodeep("a table", " (a cycle?)");
    return NULL;
  }
  luaL_checkstack(L, 4, "term conversion");
  convert = n <= UINT32_MAX && n < room;
  if (convert && (s = mk_seq_new((uint32_t)n)) == NULL) { *err = "out of memory"; return NULL; }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_Integer k;
    if (!lua_isinteger(L, -2) || (k = lua_tointeger(L, -2)) < 1 || (lua_Unsigned)k > n) {
      lua_pop(L, 2);
      mk_unref(s);
      *err = NOTSEQ;
      return NULL;
    }
    keys++;
    if (convert && (lua_Unsigned)k == at + 1) {
      /* as items() converts one: not through a function they share, which
      ** would add a frame to each level of nesting (test_host, deep_lua) */
      mk_term *item = toterm(L, lua_gettop(L), &itemerr, depth + 1, room - size + 1);
      if (item != NULL) {
        size += mk_term_size(item) - 1;   /* still at most room */
        mk_set(s, (uint32_t)at++, item);
      }
      else convert = 0;
    }
    else convert = 0;
    lua_pop(L, 1);
  }
  if (keys != n) { mk_unref(s); *err = HOLES; return NULL; }
  if (n > UINT32_MAX) { *err = "a sequence that long is not a term"; return NULL; }
  if (n >= room) { *err = toolarge(); return NULL; }
  if (itemerr != NULL) { mk_unref(s); *err = itemerr; return NULL; }
  if (items(L, idx, err, depth, room, s, at, n, size) != 0) { mk_unref(s); return NULL; }
  /* An item may be a box as deep as the limit allows. */
  if ((s = mk_seal(s)) == NULL) *err = deepterm();
  return s;
}

/* Convert the value at idx, `depth` compounds down from the term being
** built, as a term of at most `room` nodes (what the size limit leaves
** for it).  The recursion stops at the depth limit,
** which also ends a table that contains itself, and the conversion as soon
** as the whole term is sure to be larger than the size limit: a table that
** holds another many times over (t = {t, t}, sixty times) costs no more
** than the limit to refuse. */
static mk_term *toterm(lua_State *L, int idx, const char **err, size_t depth,
                       size_t room) {
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return mk_nil();
    case LUA_TBOOLEAN: return mk_bool(lua_toboolean(L, idx));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return mk_int(lua_tointeger(L, idx));
      return mk_float(lua_tonumber(L, idx));
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      return strterm(L, s, n);
    }
    case LUA_TUSERDATA: {
      box *b = tobox(L, idx);
      if (b) {
        if (mk_term_size(b->t) <= room) return mk_ref(b->t);
        *err = toolarge();
        return NULL;
      }
      if (luaL_testudata(L, idx, MKL_RTYPE_MT))
        *err = "a record constructor is not a term (call it to make a record)";
      else
        *err = "a userdata is not a term";
      return NULL;
    }
    case LUA_TTABLE: return totable(L, idx, err, depth, room);
    case LUA_TFUNCTION: *err = "a function is not a term"; return NULL;
    case LUA_TTHREAD: *err = "a coroutine is not a term"; return NULL;
    case LUA_TLIGHTUSERDATA: *err = "a light userdata is not a term"; return NULL;
    default: *err = "a term is required (no value given)"; return NULL;   /* LUA_TNONE */
  }
}

mk_term *mkl_toterm(lua_State *L, int idx, const char **err) {
  *err = NULL;
  return toterm(L, lua_absindex(L, idx), err, 0, mk_term_size_limit());
}

mk_term *mkl_checkterm(lua_State *L, int idx, const char *what) {
  const char *err;
  mk_term *t = mkl_toterm(L, idx, &err);
  if (t == NULL) luaL_error(L, "%s: %s", what, err);
  return t;
}

void mkl_pushterm(lua_State *L, mk_term *t) {
  uint32_t i;
  switch (t->kind) {
    case MK_NIL: lua_pushnil(L); break;
    case MK_FALSE: lua_pushboolean(L, 0); break;
    case MK_TRUE: lua_pushboolean(L, 1); break;
    case MK_INT: lua_pushinteger(L, t->v.i); break;
    case MK_FLOAT: lua_pushnumber(L, t->v.f); break;
    case MK_STR: seen(L, lua_pushlstring(L, mk_strdata(t), t->n), t); break;
    case MK_SEQ:
      luaL_checkstack(L, 3, "term conversion");
      lua_createtable(L, (int)t->n, 0);
      for (i = 0; i < t->n; i++) {
        mkl_pushterm(L, mk_items(t)[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      break;
    case MK_WILD: lua_rawgetp(L, LUA_REGISTRYINDEX, &key_wild); break;
    case MK_EOF: lua_rawgetp(L, LUA_REGISTRYINDEX, &key_eof); break;
    default: mkl_pushbox(L, mk_ref(t)); break;
  }
}

/* ---- the term metatable ------------------------------------------------- */

/* The metatable's own functions have it as upvalue 1 (see
** mkl_open_terms), and so have the record types' functions, which make
** boxes. */
#define U_BOXMT  lua_upvalueindex(1)

/* The box a metamethod was called for.  Lua calls these with a box
** first, but the debug library hands out the metatable, and with it the
** functions, to be called with anything. */
static mk_term *selfbox(lua_State *L) {
  box *b = boxat(L, 1);
  if (b == NULL) luaL_typeerror(L, 1, MKL_TERM_MT);
  if (b->t == NULL) luaL_argerror(L, 1, "a term box whose __gc has run");
  return b->t;
}

/* Raise "record LABEL" followed by fmt: the label printed with its length
** (mk_rtype_get refuses a NUL inside, but a message must not depend on
** it). */
static int rterror(lua_State *L, const mk_rtype *rt, const char *fmt, ...) {
  va_list ap;
  luaL_where(L, 1);
  lua_pushliteral(L, "record ");
  lua_pushlstring(L, rt->label, rt->labellen);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 4);
  return lua_error(L);
}

/*
** Boxes without finalizers.  A box's __gc releases its term, and each
** finalizer costs Lua's collector about 450 instructions (GCTM: a
** protected call, the metamethod's lookup, the object kept for one more
** cycle), two per echoed round trip (the message's box and the reply's;
** docs/performance.md, "Term boxes without a finalizer each").  In a Lua
** state whose allocator is mk_pool_lalloc (one the host made), the pool
** sees every block Lua frees, and is asked (mk_pool_watch) to show this
** file each block of a box's size before it frees it: a box whose block
** is freed is gone, and box_freed releases its term there.  The boxes of
** such a state have a metatable without __gc, so Lua neither finalizes
** nor resurrects them; `debug.getmetatable(box).__gc` still finds term_gc
** (through the metatable's own __index), and a box emptied by hand holds
** NULL, which box_freed passes over.
**
** Where a box lies in its block is Lua's business: it is measured once
** (probe_boxes), by watching the allocator while one box is made, and the
** scheme is used only if that block starts as every Lua object's does
** (its `next` pointer, then its type byte: a full userdata's).  A block of
** the same size that is no box (a string, a table, another userdata) has
** another type byte or lacks the brand, which only this file writes.
*/
static struct {
  int known;                /* 1: measured; 0: not yet */
  int usable;               /* the scheme holds (measured, as expected) */
  size_t size, off;         /* a box's block size, the box's offset in it */
} boxblock;

#define TT_OFF sizeof(void *)              /* after CommonHeader's `next` */
#define TT_USERDATA ((unsigned char)LUA_TUSERDATA)   /* variant 0: full */

static void box_freed(void *block) {
  const box *b;
  if (((unsigned char *)block)[TT_OFF] != TT_USERDATA) return;
  b = (const box *)((char *)block + boxblock.off);
  if (b->brand == &box_brand) mk_unref(b->t);   /* NULL and immortals: nothing */
}

static void *probe_block;
static size_t probe_size;

/* mk_pool_lalloc, noting the last full userdata it made. */
static void *probe_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  void *q = mk_pool_lalloc(ud, ptr, osize, nsize);
  if (ptr == NULL && osize == LUA_TUSERDATA && q != NULL) {
    probe_block = q;
    probe_size = nsize;
  }
  return q;
}

static int probe_make(lua_State *L) {
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->t = NULL;
  b->brand = NULL;
  lua_pushlightuserdata(L, b);
  return 1;
}

/* Measure a box's block in L (its allocator is mk_pool_lalloc). */
static void probe_boxes(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  char *u;
  int ok;
  probe_block = NULL;
  lua_setallocf(L, probe_alloc, ud);
  lua_pushcfunction(L, probe_make);
  ok = lua_pcall(L, 0, 1, 0) == LUA_OK;
  lua_setallocf(L, f, ud);
  if (!ok) { lua_pop(L, 1); return; }     /* out of memory: try again later */
  u = lua_touserdata(L, -1);
  lua_pop(L, 1);
  boxblock.known = 1;
  if (probe_block == NULL || u <= (char *)probe_block) return;
  boxblock.off = (size_t)(u - (char *)probe_block);
  boxblock.size = probe_size;
  boxblock.usable = boxblock.off >= TT_OFF + 1 && boxblock.off + sizeof(box) == probe_size &&
                    ((unsigned char *)probe_block)[TT_OFF] == TT_USERDATA;
}

/* Does L release its boxes' terms as their blocks are freed? */
static int freed_boxes(lua_State *L) {
  if (lua_getallocf(L, NULL) != mk_pool_lalloc) return 0;
  if (!boxblock.known) probe_boxes(L);
  if (!boxblock.usable) return 0;
  mk_pool_watch(boxblock.size, box_freed);
  return 1;
}

/* The wildcard and EOF boxes live in the registry, shared by every
** process of the Lua state: a __gc called by hand leaves them whole. */
static int term_gc(lua_State *L) {
  box *b = boxat(L, 1);
  if (b == NULL) return luaL_typeerror(L, 1, MKL_TERM_MT);
  if (b->t == NULL || b->t->refs == MK_IMMORTAL) return 0;
  mk_unref(b->t);
  b->t = NULL;
  return 0;
}

static int term_tostring(lua_State *L) {
  size_t n;
  char *s = mk_repr(selfbox(L), &n);
  if (s == NULL) return luaL_error(L, "out of memory");
  lua_pushlstring(L, s, n);
  free(s);
  return 1;
}

static int term_eq(lua_State *L) {
  box *a = tobox(L, 1), *b = tobox(L, 2);
  lua_pushboolean(L, a && b && mk_equal(a->t, b->t));
  return 1;
}

static int term_len(lua_State *L) {
  mk_term *t = selfbox(L);
  lua_pushinteger(L, t->kind == MK_REC ? t->n : 0);
  return 1;
}

/* r[i] is field i (1-based); r.name is the field called name. */
static int term_index(lua_State *L) {
  mk_term *t = selfbox(L);
  lua_Integer i = 0;
  int integral = 0;
  if (t->kind != MK_REC) return luaL_error(L, "%s has no fields", t->kind == MK_WILD ? "the wildcard" : "EOF");
  /* r[1.0] is r[1], as a table's t[1.0] is t[1] (a string "1" is no index) */
  if (lua_type(L, 2) == LUA_TNUMBER) i = lua_tointegerx(L, 2, &integral);
  if (integral) {
    if (i < 1 || (lua_Unsigned)i > t->n) { lua_pushnil(L); return 1; }
  } else {
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    /* field names are C strings: "x\0y" is not field x */
    int f = strlen(k) == kl ? mk_rtype_field(t->v.rt, k) : -1;
    if (f < 0) {
      lua_settop(L, 2);
      luaL_where(L, 1);
      lua_pushliteral(L, "record ");
      lua_pushlstring(L, t->v.rt->label, t->v.rt->labellen);
      lua_pushliteral(L, " has no field '");
      lua_pushvalue(L, 2);
      lua_pushliteral(L, "'");
      lua_concat(L, 6);
      return lua_error(L);
    }
    i = f + 1;
  }
  mkl_pushterm(L, mk_items(t)[i - 1]);
  return 1;
}

static int term_newindex(lua_State *L) {
  return luaL_error(L, "terms are immutable");
}

/* ---- record types ------------------------------------------------------- */

static mk_rtype *checkrt(lua_State *L, int idx) {
  rtbox *b = mkl_branded(L, idx, sizeof(rtbox), &rtbox_brand);
  if (b == NULL || b->rt == NULL) luaL_typeerror(L, idx, "record constructor");
  return b->rt;
}

/* A record type made by l_record: rt may be NULL there (out of memory). */
static int rt_gc(lua_State *L) {
  rtbox *b = mkl_branded(L, 1, sizeof(rtbox), &rtbox_brand);
  if (b == NULL) return luaL_typeerror(L, 1, "record constructor");
  if (b->rt) mk_rtype_unref(b->rt);
  b->rt = NULL;
  return 0;
}

/* ctor(f1, ..., fn): a record; exactly `arity` fields, each a term less
** deep than the depth limit, and together smaller than the size limit,
** so that the record itself is within both.  A record too large is said
** to be, whichever field made it so.  torec makes it from the constructor
** at 1 and the fields above it, a new reference, or raises; rt_call boxes
** it, and mkl_torecord gives it to C as it is. */
static mk_term *torec(lua_State *L) {
  mk_rtype *rt = checkrt(L, 1);
  int n = lua_gettop(L) - 1;
  size_t limit = mk_term_depth_limit(), maxsize = mk_term_size_limit();
  size_t size = 1 + (size_t)rt->arity;   /* at least: the record and its fields */
  uint32_t i;
  mk_term *r;
  if ((uint32_t)n != rt->arity) {
    rterror(L, rt, " takes %d field%s, got %d", (int)rt->arity, rt->arity == 1 ? "" : "s", n);
    return NULL;                    /* (rterror and luaL_error do not return) */
  }
  if (size > maxsize) { rterror(L, rt, ": %s", toolarge()); return NULL; }
  if ((r = mk_rec_new(rt)) == NULL) { luaL_error(L, "out of memory"); return NULL; }
  for (i = 0; i < rt->arity; i++) {
    const char *err = NULL;
    mk_term *f = toterm(L, (int)i + 2, &err, 1, maxsize - size + 1);
    if (f != NULL && f->depth >= limit) {
      mk_unref(f);
      f = NULL;
      err = deepterm();
    }
    if (f == NULL) {
      mk_unref(r);
      if (err == toolarge_msg) rterror(L, rt, ": %s", err);
      else rterror(L, rt, ", field %d: %s", (int)i + 1, err);
      return NULL;
    }
    size += mk_term_size(f) - 1;   /* still at most maxsize */
    mk_set(r, i, f);
  }
  return mk_seal(r);
}

static int rt_call(lua_State *L) {
  pushbox(L, torec(L), U_BOXMT);   /* within the limits: cannot fail */
  return 1;
}

mk_term *mkl_torecord(lua_State *L) { return torec(L); }

static int rt_is(lua_State *L) {
  mk_rtype *rt = checkrt(L, 1);
  box *b = tobox(L, 2);
  lua_pushboolean(L, b != NULL && b->t->kind == MK_REC && b->t->v.rt == rt);
  return 1;
}

static int rt_index(lua_State *L) {
  mk_rtype *rt = checkrt(L, 1);
  const char *k = luaL_checkstring(L, 2);
  uint32_t i;
  if (strcmp(k, "label") == 0) lua_pushlstring(L, rt->label, rt->labellen);
  else if (strcmp(k, "arity") == 0) lua_pushinteger(L, rt->arity);
  else if (strcmp(k, "is") == 0) {
    lua_pushcfunction(L, rt_is);
  }
  else if (strcmp(k, "fields") == 0) {
    lua_createtable(L, (int)rt->arity, 0);
    for (i = 0; i < rt->arity && rt->names; i++) {
      lua_pushstring(L, rt->names[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  } else lua_pushnil(L);
  return 1;
}

static int rt_tostring(lua_State *L) {
  mk_rtype *rt = checkrt(L, 1);
  lua_pushliteral(L, "record ");
  lua_pushlstring(L, rt->label, rt->labellen);
  lua_pushfstring(L, "/%d", (int)rt->arity);
  lua_concat(L, 3);
  return 1;
}

/* Push "(a, b)": the n field names. */
static void pushnames(lua_State *L, const char *const *names, int n) {
  luaL_Buffer B;
  int i;
  luaL_buffinit(L, &B);
  luaL_addchar(&B, '(');
  for (i = 0; i < n; i++) {
    if (i > 0) luaL_addstring(&B, ", ");
    luaL_addstring(&B, names[i]);
  }
  luaL_addchar(&B, ')');
  luaL_pushresult(&B);
}

/* market.record(label, field...) for a type already named otherwise: one
** label and arity is one type, whose field names every holder reads, so a
** second declaration may not rename them (issue 12).  names: the n new
** ones. */
static int conflict(lua_State *L, const char *label, size_t ll, const char *const *names,
                    int n) {
  mk_rtype *rt = mk_rtype_get(label, ll, (uint32_t)n, NULL);
  if (rt == NULL) return luaL_error(L, "out of memory");
  pushnames(L, names, n);
  pushnames(L, (const char *const *)rt->names, n);
  mk_rtype_unref(rt);
  return luaL_error(L, "market.record: %s/%d is declared with the fields %s already; "
                    "it cannot be declared again with %s (one label and arity is one type: "
                    "use the same names, or another label)",
                    label, n, lua_tostring(L, -1), lua_tostring(L, -2));
}

/* market.record(label, field...).  The label and the field names are C
** strings underneath (term.h): a NUL byte in one is refused, not cut;
** an empty one is refused too. */
static int l_record(lua_State *L) {
  size_t ll;
  const char *label = luaL_checklstring(L, 1, &ll);
  int n = lua_gettop(L) - 1, i;
  const char **names;
  rtbox *b;
  if (memchr(label, '\0', ll) != NULL)
    return luaL_argerror(L, 1, "a record label must not contain a NUL byte");
  if (ll == 0)   /* its records would print as "(1, 2)", a sequence's look */
    return luaL_argerror(L, 1, "a record label must not be empty");
  /* r.a could read only one of two fields named a.  The names seen go in
  ** a table: compared each with every other, 100,000 fields took 24 s in
  ** this one call, where the budget cannot stop it. */
  lua_createtable(L, 0, n);
  for (i = 0; i < n; i++) {
    size_t len;
    const char *name = luaL_checklstring(L, i + 2, &len);
    if (memchr(name, '\0', len) != NULL)
      return luaL_argerror(L, i + 2, "a field name must not contain a NUL byte");
    if (len == 0) return luaL_argerror(L, i + 2, "a field name must not be empty");
    lua_pushvalue(L, i + 2);
    if (lua_rawget(L, n + 2) != LUA_TNIL)
      return luaL_argerror(L, i + 2, lua_pushfstring(L, "field '%s' is named twice", name));
    lua_pop(L, 1);
    lua_pushvalue(L, i + 2);
    lua_pushboolean(L, 1);
    lua_rawset(L, n + 2);
  }
  lua_pop(L, 1);
  names = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
  for (i = 0; i < n; i++) names[i] = lua_tostring(L, i + 2);
  b = lua_newuserdatauv(L, sizeof *b, 0);
  b->rt = NULL;
  b->brand = &rtbox_brand;
  luaL_setmetatable(L, MKL_RTYPE_MT);
  b->rt = mk_rtype_get(label, ll, (uint32_t)n, n ? names : NULL);
  if (b->rt == NULL && errno == EEXIST) return conflict(L, label, ll, names, n);
  if (b->rt == NULL) return luaL_error(L, "out of memory");
  return 1;
}

/* market.is_term(v): can v be a topic or a message? */
static int l_is_term(lua_State *L) {
  const char *err;
  mk_term *t = mkl_toterm(L, 1, &err);
  lua_pushboolean(L, t != NULL);
  mk_unref(t);
  return 1;
}

/* market.unify(a, b): the most general unifier and true, or nil and false.
** The second result is needed because nil is a term too: unify(nil, _)
** succeeds with the unifier nil, which alone reads like a failure. */
static int l_unify(lua_State *L) {
  mk_term *a = mkl_checkterm(L, 1, "market.unify"), *b, *u;
  const char *err;
  b = mkl_toterm(L, 2, &err);
  if (b == NULL) { mk_unref(a); return luaL_error(L, "market.unify: %s", err); }
  u = mk_unify(a, b);
  mk_unref(a);
  mk_unref(b);
  if (u == NULL) { lua_pushnil(L); lua_pushboolean(L, 0); return 2; }
  mkl_pushterm(L, u);
  mk_unref(u);
  lua_pushboolean(L, 1);
  return 2;
}

/* market.repr(v [, max]): the readable text of a term; with max, at most
** max bytes of it, then "..." (term.h, mk_repr_max). */
static int l_repr(lua_State *L) {
  size_t max = SIZE_MAX, n;
  box *b = tobox(L, 1);
  mk_term *t;
  char *s;
  if (!lua_isnoneornil(L, 2)) {
    lua_Integer m = luaL_checkinteger(L, 2);
    luaL_argcheck(L, m >= 0, 2, "the length must not be negative");
    max = (size_t)m;
  }
  /* A box is shown whatever its size, as tostring shows it: what fits()
  ** keeps out of market may still be read. */
  t = b ? mk_ref(b->t) : mkl_checkterm(L, 1, "market.repr");
  s = mk_repr_max(t, max, &n);
  mk_unref(t);
  if (s == NULL) return luaL_error(L, "out of memory");
  lua_pushlstring(L, s, n);
  free(s);
  return 1;
}

/* market.term_depth_limit([n]): the depth limit in force, after setting
** it to n (process-wide: term.h, "Depth").  term_size_limit likewise. */
/* The term limits are the whole program's: a process that changed them
** would change what every other process may build (a depth of 1 broke the
** tcp driver).  Set them before the ground VM runs: from plain Lua before
** market.ground_vm, with market's --max-term-depth and --max-term-size, or
** from a C host. */
static void notinprocess(lua_State *L, const char *what, const char *flag) {
  if (mkl_running(L))
    luaL_error(L, "market.%s: the term limits are the whole program's: set them before the "
               "ground VM runs (market %s, or from the host), not from a process", what, flag);
}

/* A term limit as Lua sees it: limit([n]) -> the limit, set to n first. */
typedef struct term_limit {
  const char *name, *flag;          /* the Lua function, market's option */
  size_t (*get)(void);
  int (*set)(size_t);               /* -1 out of 1..max */
  lua_Integer max;
} term_limit;

static const term_limit depth_setting = {
  "term_depth_limit", "--max-term-depth", mk_term_depth_limit, mk_term_set_depth_limit,
  MK_TERM_DEPTH_MAX };
static const term_limit size_setting = {
  "term_size_limit", "--max-term-size", mk_term_size_limit, mk_term_set_size_limit,
  MK_TERM_SIZE_MAX };

static int limit_call(lua_State *L, const term_limit *l) {
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer n;
    notinprocess(L, l->name, l->flag);
    n = luaL_checkinteger(L, 1);
    if (n < 1 || l->set((size_t)n) != 0)
      return luaL_argerror(L, 1, lua_pushfstring(L, "the limit must be from 1 to %I", l->max));
  }
  lua_pushinteger(L, (lua_Integer)l->get());
  return 1;
}

static int l_term_depth_limit(lua_State *L) { return limit_call(L, &depth_setting); }
static int l_term_size_limit(lua_State *L) { return limit_call(L, &size_setting); }

void mkl_open_terms(lua_State *L) {
  static const luaL_Reg term_mt[] = {
    {"__gc", term_gc}, {"__tostring", term_tostring}, {"__eq", term_eq},
    {"__len", term_len}, {"__index", term_index}, {"__newindex", term_newindex},
    {NULL, NULL}};
  static const luaL_Reg rt_mt[] = {
    {"__gc", rt_gc}, {"__call", rt_call}, {"__index", rt_index},
    {"__tostring", rt_tostring}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {
    {"record", l_record}, {"is_term", l_is_term}, {"unify", l_unify},
    {"repr", l_repr}, {"term_depth_limit", l_term_depth_limit},
    {"term_size_limit", l_term_size_limit}, {NULL, NULL}};
  if (luaL_newmetatable(L, MKL_TERM_MT)) {
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, term_mt, 1);
    lua_pushliteral(L, MKL_TERM_MT);      /* getmetatable(box): this name */
    lua_setfield(L, -2, "__metatable");
    if (freed_boxes(L)) {
      /* No finalizer: the pool tells box_freed (above).  __gc is still
      ** there to be read, one metatable further. */
      lua_getfield(L, -1, "__gc");        /* mt, term_gc */
      lua_pushnil(L);
      lua_setfield(L, -3, "__gc");
      lua_createtable(L, 0, 1);           /* mt, term_gc, index */
      lua_insert(L, -2);
      lua_setfield(L, -2, "__gc");        /* mt, index */
      lua_createtable(L, 0, 1);           /* mt, index, the metatable's metatable */
      lua_insert(L, -2);
      lua_setfield(L, -2, "__index");     /* mt, its metatable */
      lua_setmetatable(L, -2);
    }
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_box_mt);
  }
  if (luaL_newmetatable(L, MKL_RTYPE_MT)) {
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, rt_mt, 1);
  }
  lua_pop(L, 2);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_wild) == LUA_TNIL) {
    lua_pop(L, 1);
    mkl_pushbox(L, mk_wild());
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_wild);
    mkl_pushbox(L, mk_eof());
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_eof);
  } else {
    lua_pop(L, 1);
  }
  luaL_setfuncs(L, funcs, 0);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_wild);
  lua_setfield(L, -2, "_");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_eof);
  lua_setfield(L, -2, "EOF");
}
