/*
** laction.c: the per-message path of market.lua, in C.
**
** A handler that answers a message typically does
**     return market.transition_no_state(market.send(reply))
** and the process then applies that transition.  In Lua that is a dozen
** function calls (argument checks, getmetatable, setmetatable, the action
** dispatch in perform_one, core.send), about half of what a Lua process
** spends per message.  These functions build the same values with
** market.lua's metatables (Action, Transition, SendAction, given to
** core.fastpath) in one C call each, and apply a transition's sends
** without going back to Lua.  A spawn is the other path done here: the
** adds and spawns that market.subscriber and market.spawn make are
** performed and applied in C too (doaction).  Every other action stays
** in market.lua.
*/
#include <string.h>

#include "mkl.h"

/* Upvalues of every closure made by core.fastpath, by index. */
#define U_ACTION      lua_upvalueindex(1)   /* market.lua's Action metatable */
#define U_TRANSITION  lua_upvalueindex(2)   /* market.lua's Transition metatable */
#define U_SENDACTION  lua_upvalueindex(3)   /* market.lua's SendAction metatable */
#define U_FIXED       lua_upvalueindex(4)   /* market.lua's FixedAction metatable */
#define U_KIND        lua_upvalueindex(5)   /* "kind" */
#define U_SEND        lua_upvalueindex(6)   /* "send" */
#define U_BODY        lua_upvalueindex(7)   /* "body" */
/* "on_message", "on_presence", "on_absence" for i = 0, 1, 2: a key pushed
** as a value is read without lua_getfield's luaS_new (hash and strcmp) */
#define U_HANDLER(i)  lua_upvalueindex(8 + (i))
/* "add", "spawn", "delete", "exit": the kinds of fixed actions, below */
#define U_KINDNAME(k) lua_upvalueindex(11 + (k))
#define NUPVALUES     14

/*
** Sends and transitions are userdata branded with the address of one of
** these (mkl_branded), checked several times per message.  A table may
** borrow their metatables with setmetatable, and the debug library may
** give them to another userdata: neither is a send or a transition.
*/
static const char send_brand = 0, trans_brand = 0, quit_brand = 0;

/* A send's block: only its brand (the body is its user value). */
typedef struct sendact { const char *brand; } sendact;

/* A quit's block: whom it kills (named: pid; else the process that
** performs it), whether it has a reason (then its one user value; none
** without) and its brand. */
typedef struct quitact {
  lua_Integer pid;
  unsigned char named, reason;
  const char *brand;
} quitact;

static int issend(lua_State *L, int idx) {
  return mkl_branded(L, idx, sizeof(sendact), &send_brand) != NULL;
}

static quitact *isquit(lua_State *L, int idx) {
  return mkl_branded(L, idx, sizeof(quitact), &quit_brand);
}

/*
** The actions made for every process, add, spawn and delete, are fixed
** actions: userdata holding their fields by position in user values (the
** layout of FIELDS below), with the kind in the block, and reading by
** name through FixedAction.__index (fixed_index).  As tables (kind in a
** hash part, the fields in an array part) each took three allocations
** and as many frees, and a spawn makes one (the add its boot returns):
** one allocation each now.  Like a send or a quit, a fixed action cannot
** be changed once made, so performing it needs no check that its fields
** are still what its constructor made.  An exit is made so for that
** alone: which status it ends the program with must not change either.
** An add's orientation and interest are small integers, kept in the
** block rather than in two user values: its constructor and doadd, run
** for every spawn, set and read two user values fewer (fielduv).
*/
enum { K_ADD, K_SPAWN, K_DELETE, K_EXIT, K_COUNT };
static const char fixed_brand = 0;
typedef struct fixedact {
  int kind;              /* K_* */
  unsigned char orientation, interest;  /* an add's (fields 2 and 3) */
  unsigned char plain;   /* a spawn's: no k, not nested, its name a string
                         ** or false, so dospawn does it (read once, by
                         ** f_fixed, rather than at every perform) */
  const char *brand;     /* &fixed_brand */
} fixedact;

static const char *const kindnames[K_COUNT] = {"add", "spawn", "delete", "exit"};
#define MAXFIELDS 5
static const char *const FIELDS[K_COUNT][MAXFIELDS + 1] = {
  {"name", "orientation", "interest", "topic", "handlers", NULL},
  {"boot", "name", "k", "nested", "budget", NULL},
  {"name", "reason", NULL},
  {"status", NULL},
};

static fixedact *tofixed(lua_State *L, int idx) {
  return mkl_branded(L, idx, sizeof(fixedact), &fixed_brand);
}

/* The user value holding field i (1-based, FIELDS) of a, 0 for one held
** in the block: an add's user values are its name, topic and handlers. */
static int fielduv(const fixedact *a, int i) {
  if (a->kind != K_ADD || i == 1) return i;
  return i <= 3 ? 0 : i - 2;
}

/* Push field i (1-based) of the fixed action a at idx; returns its type,
** LUA_TNONE (nil pushed) past the fields a holds. */
static int pushfield(lua_State *L, int idx, const fixedact *a, int i) {
  int uv = fielduv(a, i);
  if (uv != 0) return lua_getiuservalue(L, idx, uv);
  lua_pushinteger(L, i == 2 ? a->orientation : a->interest);
  return LUA_TNUMBER;
}

/* Push the fixed action of that kind, its user values the values at the
** stack indices fields[0 .. n-1] (nil for a field not given); mt holds
** the FixedAction metatable.  An add's orientation and interest are the
** caller's to set in the block returned. */
static fixedact *newfixed(lua_State *L, int kind, const int *fields, int n, int mt) {
  int i;
  fixedact *a = lua_newuserdatauv(L, sizeof *a, n);
  a->kind = kind;
  a->orientation = a->interest = a->plain = 0;
  a->brand = &fixed_brand;
  for (i = 0; i < n; i++) {
    lua_pushvalue(L, fields[i]);
    lua_setiuservalue(L, -2, i + 1);
  }
  lua_pushvalue(L, mt);
  lua_setmetatable(L, -2);
  return a;
}

/*
** Which userdata action the value at idx is (A_*), its block in *block:
** one lua_touserdata and one lua_rawlen where asking issend, isquit and
** tofixed in turn took up to three of each, several times per spawn (its
** perform, the boot's transition and its application, the kill).
*/
enum { A_NONE, A_SEND, A_QUIT, A_FIXED };

/* The size tells which brand to look for, so the sizes must differ. */
_Static_assert(sizeof(sendact) != sizeof(quitact) && sizeof(sendact) != sizeof(fixedact) &&
               sizeof(quitact) != sizeof(fixedact), "action blocks of one size");

static inline int actionof(lua_State *L, int idx, void **block) {
  char *u = lua_touserdata(L, idx);
  const char *want, *brand;
  size_t n;
  int kind;
  if (u == NULL) return A_NONE;
  n = lua_rawlen(L, idx);      /* 0 for a light userdata */
  if (n == sizeof(sendact)) { kind = A_SEND; want = &send_brand; }
  else if (n == sizeof(quitact)) { kind = A_QUIT; want = &quit_brand; }
  else if (n == sizeof(fixedact)) { kind = A_FIXED; want = &fixed_brand; }
  else return A_NONE;
  memcpy(&brand, u + n - sizeof brand, sizeof brand);   /* every block ends with it */
  if (brand != want) return A_NONE;
  *block = u;
  return kind;
}

/* Is the value at idx an action: a send or a quit (INC: applysends does
** it in C), a fixed action or a table of market.lua's (1), or neither
** (0)? */
#define INC 2

static int isaction(lua_State *L, int idx) {
  int r;
  void *u;
  switch (actionof(L, idx, &u)) {
    case A_SEND: case A_QUIT: return INC;
    case A_FIXED: return 1;
  }
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return 0;
  r = lua_rawequal(L, -1, U_ACTION);
  lua_pop(L, 1);
  return r;
}

/* The value at idx, kept by an action: made a term box in place unless
** it is an atom or a box already, so that a later change to a table
** cannot change the action; raises "what: why" if it is no term. */
static void keepterm(lua_State *L, int idx, const char *what) {
  int t = lua_type(L, idx);
  if (t == LUA_TTABLE || (t == LUA_TUSERDATA && mkl_testbox(L, idx) == NULL) ||
      t == LUA_TFUNCTION || t == LUA_TTHREAD || t == LUA_TLIGHTUSERDATA) {
    mk_term *term = mkl_checkterm(L, idx, what);
    mkl_pushterm(L, term);
    mk_unref(term);
    lua_replace(L, idx);
  }
}

/* A send takes one term.  Two arguments are the mistake of a user who
** knows publish(subject, data) (NATS, skynet.send): the second was
** dropped without a word and the topic alone went out. */
static int onebody(lua_State *L, const char *fname, int n) {
  if (n == 0) return luaL_error(L, "%s: a message body is required", fname);
  return luaL_error(L, "%s: one message body, got %d arguments (a topic and its data "
                    "go in one term: a record or a sequence)", fname, n);
}

/* send(body): the action that sends body, a userdata holding it as its
** user value (one allocation; an action table takes two) and reading as
** {kind = "send", body = body} (send_index).  Terms that are not atoms
** or boxes (sequences given as tables) are converted, so a later change
** to the table cannot change the message. */
static int f_send(lua_State *L) {
  int n = lua_gettop(L);
  if (n != 1) return onebody(L, "market.send", n);
  lua_settop(L, 1);
  keepterm(L, 1, "market.send: body");
  ((sendact *)lua_newuserdatauv(L, sizeof(sendact), 1))->brand = &send_brand;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, U_SENDACTION);
  lua_setmetatable(L, -2);
  return 1;
}

/*
** quit([pid [, reason]]): the action that kills pid, or the process that
** performs it.  A userdata, as a send is: a process killing others one by
** one (perform(quit(pid)) in a loop) made an action table (three blocks,
** with its array and hash parts) per kill in market.lua, for the
** collector to free.  The reason is converted as a send's body is.
*/
static int f_quit(lua_State *L) {
  int named = !lua_isnoneornil(L, 1), isint = 1;
  lua_Integer pid = 0;
  quitact *q;
  /* An integral float is the integer (3.0 is pid 3), as for link and
  ** monitor; a string is not taken for one: quit("done") meant a reason. */
  if (named) pid = lua_type(L, 1) == LUA_TNUMBER ? lua_tointegerx(L, 1, &isint) : (isint = 0);
  if (!isint)
    return luaL_error(L, "market.quit: pid must be an integer or nil, got %s "
                      "(market.quit(nil, reason) quits with a reason)",
                      lua_type(L, 1) == LUA_TNUMBER ? lua_pushfstring(L, "%f", lua_tonumber(L, 1))
                                                     : luaL_typename(L, 1));
  lua_settop(L, 2);
  if (!lua_isnil(L, 2)) keepterm(L, 2, "market.quit: reason");
  /* No user value without a reason: 56 bytes, not 80, for the quit
  ** made per kill (the collector's work grows with the bytes made). */
  q = lua_newuserdatauv(L, sizeof *q, lua_toboolean(L, 2));
  q->pid = pid;
  q->named = (unsigned char)named;
  q->reason = (unsigned char)lua_toboolean(L, 2);   /* false is none, as nil */
  q->brand = &quit_brand;
  if (q->reason) {
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
  }
  lua_pushvalue(L, U_SENDACTION);
  lua_setmetatable(L, -2);
  return 1;
}

/* The quit at idx done for p, as core.quit does it; 0 (nothing done) when
** its reason is no longer a term (the size limit was lowered since):
** market.lua then performs it, and core.quit raises. */
static int quitnow(lua_State *L, mk_proc *p, const quitact *q, int idx) {
  mk_term *reason = NULL;
  const char *err;
  if (q->reason) {
    lua_getiuservalue(L, idx, 1);
    reason = mkl_toterm(L, -1, &err);
    lua_pop(L, 1);
    if (reason == NULL) return 0;
  }
  if (!q->named || q->pid > 0) mk_quit(p, (mk_pid)q->pid, reason);
  mk_unref(reason);
  return 1;
}

/* __index of the userdata actions (market.lua's SendAction): a send reads
** as {kind = "send", body = ...}, a quit as market.lua's action tables
** did, {kind = "quit", pid = ..., reason = ...} with pid and reason also
** at 1 and 2 (false when not given, as perform_one reads them).  A table
** may borrow the metatable (it has no body); a foreign userdata only
** reaches here through the debug library, and is refused like one given
** to a box's metamethods (lterm.c). */
static int action_index(lua_State *L) {
  quitact *q = isquit(L, 1);
  int send = q == NULL && issend(L, 1);
  if (!send && q == NULL && lua_type(L, 1) != LUA_TTABLE)
    return luaL_typeerror(L, 1, "market.action");
  if (lua_rawequal(L, 2, U_KIND)) {
    if (q != NULL) lua_pushliteral(L, "quit"); else lua_pushvalue(L, U_SEND);
  } else if (send && lua_rawequal(L, 2, U_BODY)) {
    lua_getiuservalue(L, 1, 1);
  } else if (q != NULL) {
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
    lua_Integer i = lua_isinteger(L, 2) ? lua_tointeger(L, 2) : 0;
    if (strcmp(k, "pid") == 0 || i == 1) {
      if (q->named) lua_pushinteger(L, q->pid); else lua_pushboolean(L, 0);
    } else if (strcmp(k, "reason") == 0 || i == 2) {
      /* a quit with a reason holds it, never nil, as its one user value */
      if (q->reason) lua_getiuservalue(L, 1, 1); else lua_pushboolean(L, 0);
    } else {
      lua_pushnil(L);
    }
    if (i == 0 && !lua_toboolean(L, -1)) { lua_pop(L, 1); lua_pushnil(L); }  /* by name: nil */
  } else {
    lua_pushnil(L);
  }
  return 1;
}

/* FixedAction.__index: a.kind is the kind; a field by name is its value,
** nil for a field not given (nil or false, but a topic, which is never
** left out); a[i] is field i as stored, false included (market.lua's
** perform_one reads them so).  A foreign userdata only reaches here
** through the debug library, and is refused. */
static int fixed_index(lua_State *L) {
  fixedact *a = tofixed(L, 1);
  int i, isint;
  lua_Integer n;
  if (a == NULL) return luaL_typeerror(L, 1, "market.action");
  if (lua_rawequal(L, 2, U_KIND)) {
    lua_pushvalue(L, U_KINDNAME(a->kind));
    return 1;
  }
  n = lua_tointegerx(L, 2, &isint);
  if (isint && lua_type(L, 2) == LUA_TNUMBER) {
    if (n < 1 || n > MAXFIELDS || pushfield(L, 1, a, (int)n) == LUA_TNONE) lua_pushnil(L);
    return 1;
  }
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    for (i = 0; FIELDS[a->kind][i] != NULL; i++) {
      if (strcmp(FIELDS[a->kind][i], k) != 0) continue;
      pushfield(L, 1, a, i + 1);
      if (!lua_toboolean(L, -1) && lua_isboolean(L, -1) &&
          !(a->kind == K_ADD && i == 3))
        lua_pushnil(L);
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

/* fixed(kind, field...) -> the fixed action of that kind ("spawn",
** "delete", "exit") with those fields, for market.lua's constructors,
** which check them. */
static int f_fixed(lua_State *L) {
  static const int fields[MAXFIELDS] = {2, 3, 4, 5, 6};
  static const char *const kinds[] = {"spawn", "delete", "exit", NULL};
  static const int kindof[] = {K_SPAWN, K_DELETE, K_EXIT};
  int k = kindof[luaL_checkoption(L, 1, NULL, kinds)], n;
  fixedact *a;
  for (n = 0; FIELDS[k][n] != NULL; n++) {}
  lua_settop(L, 1 + n);
  a = newfixed(L, k, fields, n, U_FIXED);
  /* boot, name, k, nested at 2 .. 5 (fields) */
  if (k == K_SPAWN)
    a->plain = !lua_toboolean(L, 4) && !lua_toboolean(L, 5) &&
               (lua_type(L, 3) == LUA_TSTRING || !lua_toboolean(L, 3));
  return 1;
}

/*
** A transition is a userdata, not a table: one allocation instead of two,
** made and dropped for every message.  Its block holds whether it keeps
** the state and how many actions it has; its user values are the new
** state (not for transition_no_state, which has none to keep, nor for a
** nil state, which the block says) and then the actions, as given:
** actions, lists of actions (tables without a metatable, flattened when
** applied, as Marketplace allows) and nil or false (skipped).  A boot
** function's transition(nil, add) is one user value shorter so (72
** bytes, not 88): the collector's work grows with the bytes made.
*/
typedef struct trans {
  unsigned char keep;    /* transition_no_state: the state stays */
  unsigned char state;   /* user value 1 is the new state (else it is nil,
                         ** or kept) */
  unsigned char sends;   /* every action a send, a quit, nil or false: C
                         ** applies it all (mkl_apply_sends), without
                         ** market.lua */
  int n;                 /* number of actions */
  const char *brand;     /* &trans_brand */
} trans;

/* The user value holding action i (0-based) of t. */
#define ACTION_UV(t, i)  ((i) + 1 + (t)->state)

static trans *totrans(lua_State *L, int idx) {
  return mkl_branded(L, idx, sizeof(trans), &trans_brand);
}

#define MAXACTIONS 60000 /* user values per userdata are fewer than 65535 */

/* Lists of actions nest as deep as this in a transition (a list that
** holds itself would otherwise recurse without end). */
#define MAXNESTING 32

/* The list at idx, argument arg of fname, at nesting depth: every element
** an action, nil, false or a list of them (flattened when applied, as
** Marketplace's action trees are); raises otherwise. */
static void checklist(lua_State *L, int idx, const char *fname, int arg, int depth) {
  lua_Integer j, len = luaL_len(L, idx);
  if (depth > MAXNESTING)
    luaL_error(L, "%s: lists of actions in argument %d nest deeper than %d", fname, arg,
               MAXNESTING);
  luaL_checkstack(L, 2, "lists of actions");
  for (j = 1; j <= len; j++) {
    int t = lua_rawgeti(L, idx, j);
    if (isaction(L, -1) || !lua_toboolean(L, -1)) {
      /* an action, or nil or false: skipped when applied */
    } else if (t == LUA_TTABLE && !lua_getmetatable(L, -1)) {
      checklist(L, lua_gettop(L), fname, arg, depth + 1);
    } else {
      luaL_error(L, "%s: element %d of argument %d (a list) is not an action", fname, (int)j,
                 arg);
    }
    lua_pop(L, 1);
  }
}

static int mktransition(lua_State *L, int keep) {
  const char *fname = keep ? "market.transition_no_state" : "market.transition";
  int first = keep ? 1 : 2, top = lua_gettop(L), n = top - first + 1, i;
  int sends = 1, state;
  trans *t;
  if (n < 0) n = 0;       /* transition() with no state at all */
  if (n > MAXACTIONS)
    return luaL_error(L, "%s: more than %d actions (give them as one list)", fname, MAXACTIONS);
  for (i = first; i <= top; i++) {
    int a = isaction(L, i);
    if (a != 0) {
      if (a != INC) sends = 0;
      continue;
    }
    if (lua_type(L, i) == LUA_TTABLE && !lua_getmetatable(L, i)) {
      sends = 0;
      checklist(L, i, fname, i, 1);
    } else if (lua_toboolean(L, i)) {
      return luaL_error(L, "%s: argument %d is not an action (%s)", fname, i,
                        luaL_typename(L, i));
    }
  }
  state = !keep && !lua_isnoneornil(L, 1);
  t = lua_newuserdatauv(L, sizeof *t, n + state);
  t->keep = (unsigned char)keep;
  t->state = (unsigned char)state;
  t->sends = (unsigned char)sends;
  t->n = n;
  t->brand = &trans_brand;
  if (state) {
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
  }
  for (i = 0; i < n; i++) {
    lua_pushvalue(L, first + i);
    lua_setiuservalue(L, -2, ACTION_UV(t, i));
  }
  lua_pushvalue(L, U_TRANSITION);
  lua_setmetatable(L, -2);
  return 1;
}

static int f_transition(lua_State *L) { return mktransition(L, 0); }
static int f_transition_no_state(lua_State *L) { return mktransition(L, 1); }

/* Send the body of the send action at the top, pushing the body: the
** caller pops both when it goes on (market.perform returns instead). */
static void dosend(lua_State *L, mk_proc *p) {
  mk_term *body;
  lua_getiuservalue(L, -1, 1);
  body = mkl_testbox(L, -1);
  if (body != NULL) {
    mkl_send(p, body);
    if (body->kind == MK_REC) mkl_share(L, -1, body);
  } else {
    const char *err;
    body = mkl_toterm(L, -1, &err);   /* send() made it a term: cannot fail */
    if (body != NULL) mkl_send(p, body);
    mk_unref(body);
  }
}

static int doaction(lua_State *L, mk_proc *p, const fixedact *a, int idx, int last);

/* Take the transition t at tr into the context at ctx: its state, then its
** actions from the first for as long as they are sends or quits (nil and
** false are none: skipped; a quit whose reason is no longer a term is left
** to market.lua, see quitnow), and with `fixed`, adds and spawns that
** doaction takes, done for p while it lives; p NULL (not a process's
** coroutine) does none.  Returns the 0-based position of the first action
** left, t->n when none is.  Only f_apply, which runs in p's coroutine,
** does fixed actions: making a context or adding to one allocates, and a
** Lua error there (out of memory) must be caught as the process's. */
static inline int applysends(lua_State *L, int ctx, int tr, const trans *t, mk_proc *p,
                             int fixed) {
  int i, top = lua_gettop(L);
  void *u;
  if (!t->keep) {
    if (t->state) lua_getiuservalue(L, tr, 1); else lua_pushnil(L);
    lua_rawseti(L, ctx, MKL_CTX_STATE);
  }
  if (p == NULL) return 0;
  for (i = 0; i < t->n && mk_proc_alive(p); i++) {
    int type = lua_getiuservalue(L, tr, ACTION_UV(t, i));
    int kind = type == LUA_TUSERDATA ? actionof(L, -1, &u) : A_NONE;
    if (kind == A_SEND) {
      dosend(L, p);
      lua_pop(L, 2);
    } else if (kind == A_QUIT && quitnow(L, p, u, -1)) {
      lua_pop(L, 1);
    } else if (type == LUA_TNIL || type == LUA_TBOOLEAN) {
      lua_pop(L, 1);      /* false: mktransition refuses true */
    } else if (fixed && kind == A_FIXED && doaction(L, p, u, top + 1, i == t->n - 1) >= 0) {
      lua_settop(L, top);
    } else {
      lua_pop(L, 1);
      break;
    }
  }
  return i;
}

/* apply(ctx, tr): take the transition's state into ctx, then perform its
** actions from the first for as long as they are sends, quits, or adds and
** spawns that doaction takes.  Returns nothing when it did them all, else
** the positions i and n of the first and last actions left to market.lua,
** which reads them with action_at: no garbage, and no varargs to shuffle.
** tr nil (or none) is the empty transition. */
static int f_apply(lua_State *L) {
  mk_proc *p;
  trans *t;
  int i;
  if (lua_isnoneornil(L, 2)) return 0;
  if ((t = totrans(L, 2)) == NULL) {
    const char *who = mkl_applying_boot(L) ? "boot function" : "handler";
    /* The usual slip: `return market.send(x)` for a transition. */
    if (isaction(L, 2))
      lua_pushfstring(L, "%s returned an action, not a transition "
                      "(use market.transition_no_state(action))", who);
    else
      lua_pushfstring(L, "%s returned a %s, not a transition (use market.transition)",
                      who, luaL_typename(L, 2));
    return lua_error(L);
  }
  lua_settop(L, 2);
  p = mkl_current(L);
  i = applysends(L, 1, 2, t, p, 1);
  /* A dead process runs no further line (as core.send's settle). */
  if (p != NULL && !mk_proc_alive(p)) return mkl_stop_dead(L);
  if (i == t->n) return 0;
  lua_pushinteger(L, i + 1);
  lua_pushinteger(L, t->n);
  return 2;
}

/*
** market.lua's apply(ctx, tr), which applies what a boot function or a
** handler returns: f_apply, then market.lua's rest(ctx, tr, i, n)
** (upvalue U_REST, see make_apply) for the actions it left.  A boot's
** transition was a Lua frame calling f_apply and a branch: every spawn
** ran it.
*/
#define U_REST lua_upvalueindex(NUPVALUES + 1)

static int applied_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 0;
}

static int f_apply_all(lua_State *L) {
  if (f_apply(L) == 0) return 0;
  lua_pushvalue(L, U_REST);           /* ctx, tr, i, n, rest */
  lua_insert(L, 1);
  lua_callk(L, 4, 0, 0, applied_k);
  return 0;
}

int mkl_apply_sends(lua_State *L, int tr, int ctxref, mk_proc *p, int *first, int *last) {
  const trans *t = totrans(L, tr);
  int i;
  if (t == NULL || !t->sends) return 0;
  tr = lua_absindex(L, tr);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctxref);
  i = applysends(L, lua_gettop(L), tr, t, p, 0);
  lua_pop(L, 1);
  if (i == t->n || !mk_proc_alive(p)) return 1;
  *first = i + 1;         /* changed since it was made (debug.setuservalue) */
  *last = t->n;
  return 2;
}

/* action_at(tr, i): the transition's action i (1-based), as given. */
static int f_action_at(lua_State *L) {
  trans *t = totrans(L, 1);
  lua_Integer i = luaL_checkinteger(L, 2);
  if (t == NULL) return luaL_typeerror(L, 1, "market.transition");
  luaL_argcheck(L, i >= 1 && i <= t->n, 2, "no such action");
  lua_getiuservalue(L, 1, ACTION_UV(t, (int)i - 1));
  return 1;
}

/*
** market.perform(action...).  Straight-line code that sends in a loop
** (perform(send) per message) spent more in entering a Lua vararg
** function than in the send itself: so perform is this C function, which
** does sends, quits, named adds and plain spawns at level 0 by itself, in
** order, and hands the first other action and all after it to market.lua's
** perform (upvalue U_PERFORM, see make_perform), whose errors name the
** caller of perform, past this function.
*/
#define U_PERFORM lua_upvalueindex(NUPVALUES + 1)

/* Which handlers the plain table at idx holds, as MKL_TAG_* bits (with
** MKL_TAG_KNOWN; a handler false refuses its events, MKL_TAG_REFUSES);
** 0 for a table with a metatable, whose handlers are looked up at each
** event. */
static int handlertag(lua_State *L, int idx) {
  static const int bits[] = {MKL_TAG_MESSAGE, MKL_TAG_PRESENCE, MKL_TAG_ABSENCE};
  int tag = MKL_TAG_KNOWN, i, t;
  if (lua_getmetatable(L, idx)) { lua_pop(L, 1); return 0; }
  for (i = 0; i < 3; i++) {   /* no metatable: a raw read is the read */
    lua_pushvalue(L, U_HANDLER(i));
    t = lua_rawget(L, idx);
    if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) tag |= MKL_TAG_REFUSES(bits[i]);
    else if (t != LUA_TNIL) tag |= bits[i];
    lua_pop(L, 1);
  }
  return tag;
}

/*
** An add action with a name (market.subscriber(topic, name) and its kin)
** at idx, done for p as market.lua's perform_one does it: the handlers go
** into the context under the name, then the endpoint is added, tagged
** with them.  Straight-line code adds its endpoints so before it waits,
** and through market.lua the call went four frames deep (perform_rest,
** perform_one, core.add, each C function reserving 20 slots): past the 40
** slots a coroutine starts with, so its stack doubled, and a process that
** then waits keeps the doubled stack and a spare CallInfo (about 210
** bytes of its 2.1 KB; issue 10).  A handler process adds its endpoints
** so from the transition its boot returns (f_apply).  Returns 0, leaving
** the stack as it was, for an anonymous endpoint (market.lua names it
** from a count in the context) or a topic over the size limit (core.add
** raises): market.lua then performs or rejects it as before.
*/
static int doadd(lua_State *L, mk_proc *p, const fixedact *a, int idx, int last) {
  int top = lua_gettop(L), done = 0, tag;
  mk_role role;
  const char *err, *name;
  /* its user values name, topic, handlers (fielduv; f_addendpoint) at
  ** top + 1 .. top + 3 */
  if (lua_getiuservalue(L, idx, 1) != LUA_TSTRING) goto out;
  lua_getiuservalue(L, idx, 2);
  lua_getiuservalue(L, idx, 3);
  role.orientation = (mk_orientation)a->orientation;
  role.interest = (mk_interest)a->interest;
  if (!mkl_pushctx(L)) goto out;
  if ((role.topic = mkl_toterm(L, top + 2, &err)) == NULL) goto out;
  tag = handlertag(L, top + 3);
  lua_pushvalue(L, top + 1);
  lua_pushvalue(L, top + 3);
  lua_rawset(L, -3);                  /* ctx[name] = handlers */
  name = lua_tostring(L, top + 1);
  /* The last action of what a boot function or handler returned,
  ** applied as its activation's end, for an endpoint without
  ** on_presence: the process runs nothing before its own presences,
  ** which it would drop (vm.h, mk_add_endpoint_tagged). */
  mk_add_endpoint_tagged(p, name, role, (uint32_t)tag,
                         last && (tag & MKL_TAG_KNOWN) && !(tag & MKL_TAG_PRESENCE) &&
                         mkl_applying(L));
  mk_unref(role.topic);
  done = 1;
out:
  lua_settop(L, top);
  return done;
}

/*
** A spawn action (market.spawn(boot, name)) at idx, done for p: the new
** pid pushed.  Spawning one process after another from straight-line
** code went through market.lua's perform_rest and perform_one to
** core.spawn, a third of the Lua lines a spawn ran.  Returns 0 for a
** continuation (k, which market.lua registers in the context) or a
** nested VM (not a->plain): market.lua then performs it.
*/
static int dospawn(lua_State *L, mk_proc *p, const fixedact *a, int idx) {
  int top = lua_gettop(L);
  mk_pid pid;
  if (!a->plain) return 0;
  lua_getiuservalue(L, idx, 2);       /* the name (or false), under the boot */
  lua_getiuservalue(L, idx, 1);
  pid = mkl_spawn_by(L, p, lua_tostring(L, top + 1));
  lua_settop(L, top);
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

/* The fixed action a at idx, done for p if it is an add or a spawn (doadd,
** dospawn): returns how many results it pushed (a spawn's pid), or -1,
** leaving the stack as it was, when market.lua is to do it. */
static int doaction(lua_State *L, mk_proc *p, const fixedact *a, int idx, int last) {
  switch (a->kind) {
    case K_ADD: return doadd(L, p, a, idx, last) ? 0 : -1;
    case K_SPAWN: return dospawn(L, p, a, idx) ? 1 : -1;
    default: return -1;
  }
}

/* What the actions i..n that market.lua performed returned, after the
** pids of the spawns done here before them: all above the n arguments. */
static int perform_k(lua_State *L, int status, lua_KContext n) {
  (void)status;
  return lua_gettop(L) - (int)n;
}

/* Straight-line code makes its endpoints several at a time (a tcp
** connection object, three), and through market.lua each add cost a call
** of perform_one and eight reads of the action's fields through its
** __index.  A call with anything that is not an action goes there whole:
** it does the actions before that one, then names the bad argument.  One
** action alone, the common case (a send in a loop), takes the shortest
** path. */
static int f_perform(lua_State *L) {
  mk_proc *p;
  void *u;
  int n = lua_gettop(L), i = 1, r, pids = 0;
  if (n == 1 && (p = mkl_current(L)) != NULL) {
    switch (actionof(L, 1, &u)) {
      case A_SEND: dosend(L, p); break;
      case A_QUIT: if (!quitnow(L, p, u, 1)) goto rest; break;
      case A_FIXED: if ((pids = doaction(L, p, u, 1, 0)) < 0) { pids = 0; goto rest; } break;
      default: goto rest;
    }
    /* A dead process runs no further line (as core.send's settle). */
    if (!mk_proc_alive(p)) return mkl_stop_dead(L);
    return pids;
  }
  luaL_checkstack(L, n + 2, "too many actions");   /* the pids, or the rest's call */
  if (n == 0 || (p = mkl_current(L)) == NULL) goto rest;
  for (i = 1; i <= n; i++)
    if (actionof(L, i, &u) == A_NONE) { i = 1; goto rest; }
  for (i = 1; i <= n; i++) {
    int top = lua_gettop(L);
    switch (actionof(L, i, &u)) {
      case A_SEND: lua_pushvalue(L, i); dosend(L, p); lua_settop(L, top); break;
      case A_QUIT: if (!quitnow(L, p, u, i)) goto rest; break;
      case A_FIXED: if ((r = doaction(L, p, u, i, 0)) < 0) goto rest; pids += r; break;
      default: goto rest;
    }
    if (!mk_proc_alive(p)) return mkl_stop_dead(L);
  }
  return pids;
rest:
  lua_pushvalue(L, U_PERFORM);
  for (r = i; r <= n; r++) lua_pushvalue(L, r);
  lua_callk(L, n - i + 1, LUA_MULTRET, n, perform_k);
  return perform_k(L, LUA_OK, n);
}

/* f as a closure with the fastpath's upvalues and the Lua function at 1
** after them (make_apply, make_perform). */
static int withlua(lua_State *L, lua_CFunction f) {
  int i;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  for (i = 1; i <= NUPVALUES; i++) lua_pushvalue(L, lua_upvalueindex(i));
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, f, NUPVALUES + 1);
  return 1;
}

/* make_perform(perform_rest) -> market.perform */
static int f_make_perform(lua_State *L) { return withlua(L, f_perform); }

/* make_apply(rest) -> apply */
static int f_make_apply(lua_State *L) { return withlua(L, f_apply_all); }

/* Checks market.lua makes on every spawn and endpoint, in C: Lua's own
** getmetatable and setmetatable look the "__metatable" field up by name
** each time, which costs more than the rest of the check. */

/* is_action(v) */
static int f_is_action(lua_State *L) {
  lua_pushboolean(L, isaction(L, 1));
  return 1;
}

/* is_box(v): is v a term box (a record, the wildcard, EOF)? */
static int f_is_box(lua_State *L) {
  lua_pushboolean(L, mkl_testbox(L, 1) != NULL);
  return 1;
}

/* action(t): t, made an action (market.lua builds the table). */
static int f_action(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushvalue(L, U_ACTION);
  lua_setmetatable(L, 1);
  return 1;
}

/* handler_tag(handlers): the endpoint tag lproc.c reads (MKL_TAG_*) for a
** plain table; 0 for one with a metatable, whose handlers are looked up
** at each event. */
static int f_handler_tag(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushinteger(L, handlertag(L, 1));
  return 1;
}

/* ---- endpoint constructors ---------------------------------------------- */

/*
** market.subscriber and its kin run once for every endpoint a process adds,
** so on every spawn of a handler process.  In Lua they were a third of a
** spawn's instructions: the varargs count, type() (which interns its
** answer each time), pairs over the handler table, the action table.  The
** same checks in C, with the same messages at the caller's line (luaL_error
** names the caller of a C function, as error(msg, 2) does in Lua).
*/

/* Upvalues of an endpoint constructor, by index. */
#define E_FIXED       lua_upvalueindex(1)   /* market.lua's FixedAction metatable */
#define E_FNAME       lua_upvalueindex(2)   /* "market.subscriber", for errors */
#define E_ORIENTATION lua_upvalueindex(3)
#define E_INTEREST    lua_upvalueindex(4)
#define E_NOHANDLERS  lua_upvalueindex(5)   /* the table shared by endpoints without one */

/* The handler keys, by the index handlerkey returns. */
static const char *const handlerkeys[] = {"on_message", "on_presence", "on_absence", "name"};
#define HK_NAME   3
#define HK_NONE   4

/* Which handler key the n bytes at key are (HK_NONE: none).  By length
** first: a spawn checks two or three keys, and the loop over the four
** names with strlen and memcmp was a third of the check. */
static int handlerkey(const char *key, size_t n) {
  int i;
  switch (n) {
    case 4: i = HK_NAME; break;
    case 10: i = key[3] == 'm' ? 0 : 2; break;
    case 11: i = 1; break;
    default: return HK_NONE;
  }
  return memcmp(handlerkeys[i], key, n) == 0 ? i : HK_NONE;
}

/* Check one entry (key k, value v) of a handler table; returns its
** handlerkey. */
static int checkhandler(lua_State *L, int k, int v) {
  size_t n;
  int i = HK_NONE;
  if (lua_type(L, k) == LUA_TSTRING) {
    const char *key = lua_tolstring(L, k, &n);
    i = handlerkey(key, n);
  }
  if (i == HK_NONE) {
    lua_pushvalue(L, k);       /* luaL_tolstring may call __tostring */
    luaL_error(L, "%s: unknown handler key '%s'", lua_tostring(L, E_FNAME),
               luaL_tolstring(L, -1, NULL));
  }
  /* false: the endpoint refuses such events (mkl.h, MKL_TAG_REFUSES) */
  if (i < HK_NAME && lua_type(L, v) != LUA_TFUNCTION &&
      !(lua_type(L, v) == LUA_TBOOLEAN && !lua_toboolean(L, v)))
    luaL_error(L, "%s: handler %s is not a function (nor false)", lua_tostring(L, E_FNAME),
               handlerkeys[i]);
  return i;
}

/* Check every entry of the handler table at index 2, as pairs() sees them
** (a __pairs metamethod included), and push its name field.  A table
** without a metatable gives its name on the way (a raw read is what
** lua_getfield would do); any other is asked with lua_getfield, which
** may run its __index. */
static void checkhandlers(lua_State *L) {
  if (!lua_getmetatable(L, 2)) {
    lua_pushnil(L);                   /* the name, until the walk finds one */
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      if (checkhandler(L, -2, -1) == HK_NAME) lua_copy(L, -1, -3);
      lua_pop(L, 1);
    }
    return;
  }
  lua_pop(L, 1);
  if (luaL_getmetafield(L, 2, "__pairs") == LUA_TNIL) {
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      checkhandler(L, -2, -1);
      lua_pop(L, 1);
    }
  } else {
    lua_pushvalue(L, 2);
    lua_call(L, 1, 3);                /* iterator, its state, the control */
    for (;;) {
      lua_pushvalue(L, -3);
      lua_pushvalue(L, -3);
      lua_pushvalue(L, -3);
      lua_call(L, 2, 2);              /* key, value */
      if (lua_isnil(L, -2)) break;
      checkhandler(L, -2, -1);
      lua_pop(L, 1);
      lua_replace(L, -2);             /* the key is the next control */
    }
    lua_pop(L, 5);
  }
  lua_getfield(L, 2, "name");
}

/* market.subscriber(topic [, handlers | name]) and its kin: the action
** {kind = "add", name, orientation, interest, topic, handlers}, its fields
** after kind by position: a table with six named fields has a hash part of
** eight nodes (248 bytes in all, made and dropped for every endpoint
** added); one with five in its array part and kind in the hash, 160.
** The topic is a term as it is (an atom or a box), else converted into a
** box; handlers is a table of on_message, on_presence, on_absence and
** name, or just the name. */
static int f_addendpoint(lua_State *L) {
  static const int fields[] = {3, 1, 2};   /* name, topic, handlers (fielduv) */
  fixedact *a;
  const char *fname = lua_tostring(L, E_FNAME);
  int nargs = lua_gettop(L), t;
  if (nargs == 0) return luaL_error(L, "%s: a topic is required", fname);
  lua_settop(L, 2);
  t = lua_type(L, 1);
  if (!(t == LUA_TNIL || t == LUA_TBOOLEAN || t == LUA_TNUMBER || t == LUA_TSTRING ||
        mkl_testbox(L, 1) != NULL)) {
    const char *err;
    mk_term *topic = mkl_toterm(L, 1, &err);
    if (topic == NULL) return luaL_error(L, "%s: topic: %s", fname, err);
    mkl_pushbox(L, topic);
    lua_replace(L, 1);
  }
  lua_pushnil(L);                     /* 3: the endpoint's name */
  switch (lua_type(L, 2)) {
    case LUA_TNIL:
      break;
    case LUA_TSTRING:
      lua_copy(L, 2, 3);
      lua_pushnil(L);
      lua_replace(L, 2);
      break;
    case LUA_TTABLE:
      checkhandlers(L);
      t = lua_type(L, -1);
      if (t != LUA_TNIL && t != LUA_TSTRING)
        return luaL_error(L, "%s: endpoint name must be a string", fname);
      lua_replace(L, 3);
      break;
    default:
      return luaL_error(L, "%s: handlers must be a table, got %s", fname, luaL_typename(L, 2));
  }
  if (lua_type(L, 3) == LUA_TSTRING) {
    /* The VM keeps names as C strings: "a\0b" and "a\0c" were both 'a'. */
    size_t n;
    const char *name = lua_tolstring(L, 3, &n);
    if (strlen(name) != n) return luaL_error(L, "%s: endpoint name must not contain a NUL byte", fname);
    /* "#1", "#2", ... name a process's anonymous endpoints (market.lua):
    ** one of its own named so was taken for the anonymous one's re-add. */
    if (n > 1 && name[0] == '#' && strspn(name + 1, "0123456789") == n - 1)
      return luaL_error(L, "%s: endpoint name '%s' is reserved (anonymous endpoints are "
                        "named #1, #2, ...)", fname, name);
  }
  if (lua_isnil(L, 2)) {
    lua_pushvalue(L, E_NOHANDLERS);
    lua_replace(L, 2);
  }
  a = newfixed(L, K_ADD, fields, 3, E_FIXED);
  a->orientation = (unsigned char)lua_tointeger(L, E_ORIENTATION);
  a->interest = (unsigned char)lua_tointeger(L, E_INTEREST);
  return 1;
}

/* endpoint(fname, orientation, interest, no_handlers) -> a constructor
** (f_addendpoint) for that role. */
static int f_endpoint(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkinteger(L, 2);
  luaL_checkinteger(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  lua_pushvalue(L, U_FIXED);
  lua_rotate(L, 1, 1);
  lua_pushcclosure(L, f_addendpoint, 5);
  return 1;
}

/* core.fastpath(Action, Transition, SendAction, FixedAction) -> { send=, quit=,
** transition=, transition_no_state=, apply=, action_at=, make_perform=,
** make_apply=, is_action=, is_box=, action=, handler_tag=, endpoint=,
** fixed= }; sets SendAction.__index, for sends and quits, and
** FixedAction.__index. */
static int c_fastpath(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"send", f_send}, {"transition", f_transition},
    {"transition_no_state", f_transition_no_state}, {"apply", f_apply},
    {"action_at", f_action_at},
    {"make_perform", f_make_perform}, {"make_apply", f_make_apply},
    {"is_action", f_is_action}, {"is_box", f_is_box},
    {"action", f_action}, {"handler_tag", f_handler_tag}, {"endpoint", f_endpoint},
    {"quit", f_quit}, {"fixed", f_fixed}, {"__index", action_index},
    {"fixed_index", fixed_index},
    {NULL, NULL}};
  int i;
  for (i = 1; i <= 4; i++) luaL_checktype(L, i, LUA_TTABLE);
  lua_settop(L, 4);
  lua_createtable(L, 0, 16);
  for (i = 1; i <= 4; i++) lua_pushvalue(L, i);
  lua_pushliteral(L, "kind");
  lua_pushliteral(L, "send");
  lua_pushliteral(L, "body");
  lua_pushliteral(L, "on_message");
  lua_pushliteral(L, "on_presence");
  lua_pushliteral(L, "on_absence");
  for (i = 0; i < K_COUNT; i++) lua_pushstring(L, kindnames[i]);
  luaL_setfuncs(L, funcs, NUPVALUES);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, 3, "__index");
  lua_getfield(L, -1, "fixed_index");
  lua_setfield(L, 4, "__index");
  lua_pushnil(L);
  lua_setfield(L, -2, "__index");
  lua_pushnil(L);
  lua_setfield(L, -2, "fixed_index");
  return 1;
}

void mkl_open_actions(lua_State *L) {
  lua_pushcfunction(L, c_fastpath);
  lua_setfield(L, -2, "fastpath");
}
