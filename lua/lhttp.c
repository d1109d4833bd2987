/*
** lhttp.c: HTTP/1.x messages parsed by Node's http_parser (Debian's
** libhttp-parser-dev), for market.http (lua/http.lua), the inspector
** (lua/inspect.lua) and its client (`market inspect`).  Internal: their
** Lua halves get it as an argument, it is no `require`-able module.
**
**   http.request(max [, stream])
**                          -> parser of one request (a server's side):
**                             `max` bounds its body, and its head up to
**                             HEAD_MAX; stream: its body is taken as it
**                             comes (take), so `max` bounds the head alone
**   http.response(max [, no_body [, head]])
**                          -> parser of one response (a client's side):
**                             `max` bounds its body alone, `head` its head
**                             (HEAD_MAX unless given); no_body: the answer
**                             to a HEAD, whose head says what length a
**                             GET's body would have (a 1xx, 204 or 304
**                             has none either)
**   parser:feed(bytes)     -> true, rest: the message is complete, and
**                             rest is what of bytes follows it (the next
**                             pipelined message, "" if none);
**                             false: more is needed;
**                             nil, why, status: malformed (400), past
**                             the limit (431 while in the head, 413 in
**                             the body: a request's as soon as its
**                             Content-Length or a chunk's size says so),
**                             or of another HTTP than 1.x (505).  feed("") says the stream ended
**                             (a response delimited by the close).
**   http.head(first, headers, own, fname, date, length, close [, body])
**                          -> a message's bytes, whether headers asked to
**                             close (l_head says how)
**   parser:status()        -> once a response's head is whole, its status
**                             (a request's: 0); nil before
**   parser:take()          -> the body's bytes come so far, which the
**                             parser then forgets (a body handed on as
**                             it comes: `max` bounds each piece, not the
**                             whole); message() has only what follows
**   parser:reset()         -> the parser as new, for the next message
**                             (its buffers kept: a connection's requests
**                             share one parser)
**   parser:message()       -> {method=, target=, path=, query=, version=,
**                             status=, headers={lower-cased name =
**                             value}, body=, set_cookies=,
**                             keep_alive=}   (fields so far; keep_alive
**                             once the head is whole; path and query:
**                             the target cut at its first '?')
**   http.public_suffix(domain)
**                          -> whether domain (lower case) is a public
**                             suffix ("com", "co.uk", "github.io"), for
**                             the cookie jar (RFC 6265 5.3, step 5):
**                             libpsl's list, the newest of the one built
**                             into Debian's libpsl5 and the publicsuffix
**                             package's file, loaded at the first call
**                             (and libpsl with it: psl_load); nil, why
**                             when there is none
**
** The bytes come as the connection delivers them, in pieces cut anywhere:
** the parser keeps what it needs between pieces in buffers that grow with
** the message and no further than its limits (no fixed buffer on the
** input path).  A repeated header's values are joined with ", " (RFC 9110 5.3);
** Set-Cookie's are kept apart as well, in set_cookies (a list; RFC 9110
** 5.3 again: a cookie's Expires holds a comma, so joined they are not
** one header's values any more).  A chunked body's trailer fields are
** read and dropped (on_field).
*/
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>
#include <libpsl.h>

#include "mkl.h"

#define LHTTP_MT "market.http"

/* The bytes of a response's head, unless told, and the most a request's
** may have, whatever its `max`: what http_parser takes of any head
** (HPE_HEADER_OVERFLOW past it), so that a head past it is called too
** large (431), not malformed (400). */
#define HEAD_MAX HTTP_MAX_HEADER_SIZE
#define LPSL_MT "market.http public suffixes"

/* A growing byte buffer, owned by its parser (freed in __gc). */
typedef struct hbuf { char *p; size_t n, cap; } hbuf;

typedef struct lhttp {
  http_parser p;          /* first: the callbacks cast back from it */
  lua_State *L;           /* while feed runs: the parser is at index 1 */
  size_t max, seen;       /* the limit; bytes of the head fed so far */
  size_t head_max;        /* the head's limit: a request's is max (HEAD_MAX at
                          ** most), a response's its own (a client bounds an
                          ** answer's body, not the head that comes with it) */
  int overflow;           /* 0, or the status the message failed with: a
                          ** buffer past max (413, 431), or `why` */
  int in_value;           /* the last header callback was a value */
  int head_done, done;
  int no_body;            /* a response to HEAD: none, whatever its head says */
  int stream;             /* the body is taken as it comes: max bounds the head */
  const char *why;        /* a failure found here, not a limit's (400, 501), or NULL */
  hbuf url, status, field, value, body;
  const char *brand;      /* last: &lhttp_brand (mkl_branded) */
} lhttp;

static const char lhttp_brand[] = "market.http parser";

static int grow(lhttp *h, hbuf *b, const char *at, size_t n) {
  /* A streamed body holds at most what one feed brought: taken after it. */
  size_t max = b != &h->body ? h->head_max : h->stream ? SIZE_MAX : h->max;
  /* An empty piece (an empty header value, say) adds nothing: b->p may
  ** still be NULL, and memcpy takes no NULL even for 0 bytes (C11 7.24.1). */
  if (n == 0) return 0;
  if (b->n + n > max || b->n + n < n) {
    h->overflow = h->head_done ? 413 : 431;
    return -1;
  }
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    char *p;
    while (cap < b->n + n) cap = cap > max / 2 ? max : cap * 2;   /* n + b->n <= max */
    if (cap > max) cap = max;
    if ((p = realloc(b->p, cap)) == NULL) { luaL_error(h->L, "market.http: out of memory"); return -1; }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, at, n);
  b->n += n;
  return 0;
}

/* The message fails with `status` for `why` (a static string), told by
** feed as a limit's failure is (overflowed); -1, for a callback to return. */
static int fails(lhttp *h, int status, const char *why) {
  h->overflow = status;
  h->why = why;
  return -1;
}

/* A token's characters (RFC 9110 5.6.2): a header's name is one. */
static int tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* The header whose name and value are buffered goes into the headers
** table (the parser's user value), joined to an earlier one of its name;
** -1 (a 400, malformed: fails) when its name is malformed.  http_parser lets
** whitespace between a name and its colon through, and frames the message
** by a "Content-Length :" all the same, where the name kept its space: the
** handler's headers then disagreed with the framing, and "Host :" beside
** "Host:" made two hosts.  A request with it is refused (RFC 9112 5.1: a
** server must answer 400); a response's name is read without it, as a
** proxy must forward it. */
static int flush_header(lhttp *h) {
  lua_State *L = h->L;
  size_t i;
  if (!h->in_value) return 0;
  for (; h->field.n > 0; h->field.n--) {
    char last = h->field.p[h->field.n - 1];
    if (last != ' ' && last != '\t') break;
    if (h->p.type == HTTP_REQUEST) return fails(h, 400, "whitespace before a header's colon");
  }
  if (h->field.n == 0) return fails(h, 400, "empty header name");
  for (i = 0; i < h->field.n; i++) {
    char c = h->field.p[i];
    if (!tchar((unsigned char)c)) return fails(h, 400, "invalid character in a header name");
    if (c >= 'A' && c <= 'Z') h->field.p[i] = (char)(c + ('a' - 'A'));
  }
  lua_getiuservalue(L, 1, 1);
  lua_pushlstring(L, h->field.p, h->field.n);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) == LUA_TSTRING) {
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, h->value.p, h->value.n);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, h->value.p, h->value.n);
  }
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (h->field.n == 10 && memcmp(h->field.p, "set-cookie", 10) == 0) {
    lua_getiuservalue(L, 1, 2);
    lua_pushlstring(L, h->value.p, h->value.n);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
  }
  h->field.n = h->value.n = 0;
  h->in_value = 0;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  lhttp *h = (lhttp *)p;
  return grow(h, &h->url, at, n);
}

static int on_status(http_parser *p, const char *at, size_t n) {
  lhttp *h = (lhttp *)p;
  return grow(h, &h->status, at, n);
}

/* After the head, the fields are a chunked body's trailer: dropped.  They
** may not be merged into the headers (RFC 9110 6.5.1: a trailer "Host" or
** "Set-Cookie" was taken as the head's), and a handler reading a streamed
** body sees its request's headers as they were. */
static int on_field(http_parser *p, const char *at, size_t n) {
  lhttp *h = (lhttp *)p;
  if (h->head_done) return 0;
  if (flush_header(h) < 0) return -1;
  return grow(h, &h->field, at, n);
}

static int on_value(http_parser *p, const char *at, size_t n) {
  lhttp *h = (lhttp *)p;
  if (h->head_done) return 0;
  h->in_value = 1;
  return grow(h, &h->value, at, n);
}

/* Room left for a request's body that is kept whole (its buffer holds
** max bytes: grow), or no bound for one taken as it comes.  A response's
** may go to a sink as it comes (http.lua, exchange), which the parser
** hears of only after its head: its buffer's limit alone holds it. */
static uint64_t body_room(const lhttp *h) {
  if (h->stream || h->p.type != HTTP_REQUEST) return UINT64_MAX;
  return h->max > h->body.n ? (uint64_t)(h->max - h->body.n) : 0;
}

/* Whether a response's status says it has no body, whatever its head
** says (RFC 9112 6.3): a 1xx, a 204, a 304.  http_parser heeds its
** Content-Length or Transfer-Encoding first: a 304's Content-Length (the
** length a 200 would have, RFC 9110 8.6) was waited for, and a 103 Early
** Hints' took the real answer's status line for its body. */
static int bodiless(const http_parser *p) {
  return p->type == HTTP_RESPONSE &&
         (p->status_code / 100 == 1 || p->status_code == 204 || p->status_code == 304);
}

/* Whether a request's Transfer-Encoding names a coding other than chunked
** (RFC 9112 6.1: a server answers one it does not know with 501).
** http_parser refuses a list that does not end in chunked, and takes one
** that does as chunked alone: "gzip, chunked" gave the handler the bytes
** still gzipped, as if they were the body. */
static int unknown_coding(lhttp *h) {
  lua_State *L = h->L;
  size_t n, i = 0;
  const char *te;
  int other;
  if (h->p.type != HTTP_REQUEST || !(h->p.flags & F_CHUNKED)) return 0;
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "transfer-encoding");
  te = lua_tolstring(L, -1, &n);
  if (te == NULL) { lua_pop(L, 2); return 0; }
  while (i < n && (te[i] == ' ' || te[i] == '\t')) i++;
  while (n > i && (te[n - 1] == ' ' || te[n - 1] == '\t')) n--;
  other = n - i != 7 || strncasecmp(te + i, "chunked", 7) != 0;
  lua_pop(L, 2);
  return other;
}

static int on_head(http_parser *p) {
  lhttp *h = (lhttp *)p;
  if (flush_header(h) < 0) return -1;
  h->head_done = 1;
  /* Only HTTP/1.x is spoken here: "HTTP/9.9" was answered as 1.1. */
  if (p->http_major != 1) return fails(h, 505, "HTTP version not supported: only 1.x");
  /* RFC 9110 15: a status is 100 to 599 (http_parser takes any three
  ** digits: "000" was a status 0). */
  if (p->type == HTTP_RESPONSE && (p->status_code < 100 || p->status_code > 599))
    return fails(h, 400, "a status outside 100..599");
  if (unknown_coding(h)) return fails(h, 501, "a transfer coding other than chunked");
  if (bodiless(p)) return 1;
  /* A body said to be longer than the limit is refused now (413), not once
  ** it has come, or when its sender gives up waiting for an answer. */
  if (!h->no_body && (p->flags & F_CONTENTLENGTH) && p->content_length > body_room(h)) {
    h->overflow = 413;
    return -1;
  }
  return h->no_body;      /* 1: the parser takes the message as bodiless */
}

/* The same for each chunk of a chunked body (its size is content_length). */
static int on_chunk(http_parser *p) {
  lhttp *h = (lhttp *)p;
  if (p->content_length > body_room(h)) { h->overflow = 413; return -1; }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  lhttp *h = (lhttp *)p;
  return grow(h, &h->body, at, n);
}

/* One message is all a parser takes: pause, so that execute stops here. */
static int on_done(http_parser *p) {
  lhttp *h = (lhttp *)p;
  h->done = 1;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings settings = {
  .on_url = on_url, .on_status = on_status, .on_header_field = on_field,
  .on_header_value = on_value, .on_headers_complete = on_head, .on_body = on_body,
  .on_message_complete = on_done, .on_chunk_header = on_chunk,
};

/* The parser at 1, by its brand: luaL_checkudata looks its metatable up
** by name, three times a request. */
static lhttp *check(lua_State *L) {
  lhttp *h = mkl_branded(L, 1, sizeof(lhttp), lhttp_brand);
  if (h == NULL) luaL_typeerror(L, 1, "http parser");
  return h;
}

static int fail(lua_State *L, const char *why, int status) {
  luaL_pushfail(L);
  lua_pushstring(L, why);
  lua_pushinteger(L, status);
  return 3;
}

/* The failure the message met (h->overflow: a limit passed, or h->why),
** the same each time it is told.  (A response's head too large was
** called a request's: the parser is the client's too.) */
static int overflowed(lua_State *L, const lhttp *h) {
  int req = h->p.type == HTTP_REQUEST;
  return fail(L, h->why ? h->why :
                 h->overflow == 431 ? (req ? "request head too large" : "response head too large") :
                 "body too large",
              h->overflow);
}

static int l_feed(lua_State *L) {
  lhttp *h = check(L);
  size_t n, used;
  const char *s = luaL_checklstring(L, 2, &n);
  enum http_errno e;
  if (h->done) { lua_pushboolean(L, 1); lua_pushvalue(L, 2); return 2; }
  if (h->overflow) return overflowed(L, h);
  lua_settop(L, 2);
  h->L = L;
  /* The head, however it is cut, counts against its limit as it comes.
  ** A piece that would pass it is parsed only as far as the limit first:
  ** if the head ends there, the rest is body (limited by its buffer: 413),
  ** not more head (431). */
  if (!h->head_done && n > h->head_max - h->seen) {
    size_t room = h->head_max - h->seen;
    /* room 0 would be no piece: an empty one tells the parser the end. */
    used = room ? http_parser_execute(&h->p, &settings, s, room) : 0;
    h->seen += used;
    if (!h->head_done && !h->done && !h->overflow && HTTP_PARSER_ERRNO(&h->p) == HPE_OK)
      h->overflow = 431;
    else if (!h->done && !h->overflow && HTTP_PARSER_ERRNO(&h->p) == HPE_OK && used == room)
      used += http_parser_execute(&h->p, &settings, s + room, n - room);
  } else {
    if (!h->head_done) h->seen += n;
    used = http_parser_execute(&h->p, &settings, s, n);
  }
  h->L = NULL;
  if (h->done) {
    /* Paused in on_message_complete: execute counted the message's last
    ** byte, and what follows is the next message's. */
    lua_pushboolean(L, 1);
    lua_pushlstring(L, s + used, n - used);
    return 2;
  }
  if (h->overflow) return overflowed(L, h);
  e = HTTP_PARSER_ERRNO(&h->p);
  /* The parser's own bound on a head, should it be lower than HEAD_MAX
  ** (a library built with another HTTP_MAX_HEADER_SIZE than its header
  ** says): too large all the same.  (A trailer past it stays malformed.) */
  if (e == HPE_HEADER_OVERFLOW && !h->head_done) {
    h->overflow = 431;
    return overflowed(L, h);
  }
  if (e != HPE_OK || used != n) return fail(L, http_errno_description(e), 400);
  lua_pushboolean(L, 0);
  return 1;
}

static void setbuf_field(lua_State *L, const hbuf *b, const char *k) {
  lua_pushlstring(L, b->p ? b->p : "", b->n);
  lua_setfield(L, -2, k);
}

static int l_message(lua_State *L) {
  lhttp *h = check(L);
  lua_createtable(L, 0, 9);     /* its fields, and http.serve's remote */
  if (h->p.type == HTTP_REQUEST) {
    const char *u = h->url.p ? h->url.p : "", *q = memchr(u, '?', h->url.n);
    lua_pushstring(L, http_method_str((enum http_method)h->p.method));
    lua_setfield(L, -2, "method");
    setbuf_field(L, &h->url, "target");
    /* The target cut at its first '?': path, query (none: nil). */
    lua_pushlstring(L, u, q ? (size_t)(q - u) : h->url.n);
    lua_setfield(L, -2, "path");
    if (q) {
      lua_pushlstring(L, q + 1, h->url.n - (size_t)(q - u) - 1);
      lua_setfield(L, -2, "query");
    }
  } else {
    lua_pushinteger(L, h->p.status_code);
    lua_setfield(L, -2, "status");
    setbuf_field(L, &h->status, "reason");
  }
  if (h->p.http_major < 10 && h->p.http_minor < 10) {   /* "1.1": no formatter */
    char v[3] = {(char)('0' + h->p.http_major), '.', (char)('0' + h->p.http_minor)};
    lua_pushlstring(L, v, 3);
  } else {
    lua_pushfstring(L, "%d.%d", (int)h->p.http_major, (int)h->p.http_minor);
  }
  lua_setfield(L, -2, "version");
  lua_getiuservalue(L, 1, 1);
  lua_setfield(L, -2, "headers");
  lua_getiuservalue(L, 1, 2);
  lua_setfield(L, -2, "set_cookies");
  setbuf_field(L, &h->body, "body");
  if (h->head_done) {
    lua_pushboolean(L, http_should_keep_alive(&h->p));
    lua_setfield(L, -2, "keep_alive");
  }
  return 1;
}

/* Each of the parser's buffers emptied; with `release`, its memory freed. */
static void empty_buffers(lhttp *h, int release) {
  hbuf *bufs[] = {&h->url, &h->status, &h->field, &h->value, &h->body};
  size_t i;
  for (i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
    if (release) {
      free(bufs[i]->p);
      bufs[i]->p = NULL;
      bufs[i]->cap = 0;
    }
    bufs[i]->n = 0;
  }
}

static int l_status(lua_State *L) {
  lhttp *h = check(L);
  if (!h->head_done) return 0;
  lua_pushinteger(L, h->p.type == HTTP_RESPONSE ? (lua_Integer)h->p.status_code : 0);
  return 1;
}

static int l_take(lua_State *L) {
  lhttp *h = check(L);
  lua_pushlstring(L, h->body.p ? h->body.p : "", h->body.n);
  h->body.n = 0;
  return 1;
}

static int l_gc(lua_State *L) {
  empty_buffers(check(L), 1);
  return 0;
}

/* parser:reset(): ready for the next message of its kind, as new; the
** buffers are kept (emptied) for it, the headers table is a new one. */
static int l_reset(lua_State *L) {
  lhttp *h = check(L);
  http_parser_init(&h->p, (enum http_parser_type)h->p.type);
  empty_buffers(h, 0);
  h->seen = 0;
  h->overflow = h->in_value = h->head_done = h->done = 0;
  h->why = NULL;
  lua_newtable(L);
  lua_setiuservalue(L, 1, 1);
  lua_newtable(L);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

static int make(lua_State *L, enum http_parser_type type) {
  lua_Integer max = luaL_checkinteger(L, 1);
  lhttp *h;
  luaL_argcheck(L, max > 0, 1, "the limit must be a positive number of bytes");
  h = lua_newuserdatauv(L, sizeof *h, 2);   /* the headers, the Set-Cookie values */
  memset(h, 0, sizeof *h);
  http_parser_init(&h->p, type);
  h->max = h->head_max = (size_t)max;
  h->brand = lhttp_brand;
  luaL_setmetatable(L, LHTTP_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 2);
  return 1;
}

static int l_request(lua_State *L) {
  int stream = lua_toboolean(L, 2);
  lhttp *h;
  make(L, HTTP_REQUEST);
  h = lua_touserdata(L, -1);
  h->stream = stream;
  /* Past HEAD_MAX the parser fails the head as malformed, whatever max is
  ** (a 90 KiB head under the default 1 MiB got 400): the bound is ours. */
  if (h->head_max > HEAD_MAX) h->head_max = HEAD_MAX;
  return 1;
}
static int l_response(lua_State *L) {
  int no_body = lua_toboolean(L, 2);
  lua_Integer head = luaL_optinteger(L, 3, HEAD_MAX);
  lhttp *h;
  luaL_argcheck(L, head > 0, 3, "the limit must be a positive number of bytes");
  make(L, HTTP_RESPONSE);
  h = lua_touserdata(L, -1);
  h->no_body = no_body;
  h->head_max = (size_t)head;
  return 1;
}

/* ---- heads of messages market.http writes ---------------------------- */

/* Raises the message alone: the caller (lua/http.lua) says where it is
** from, as its own errors do (luaL_error would add http.lua's line). */
static int herror(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

/* The value at idx as a message shows it: a string quoted, else tostring. */
static const char *shown(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) return lua_pushfstring(L, "\"%s\"", lua_tostring(L, idx));
  return luaL_tolstring(L, idx, NULL);
}

/* The bytes of a head being written: a userdata at stack slot `slot`,
** replaced by one twice as large (and copied) when full, so that an error
** raised midway leaves only garbage for the collector.  The head is made
** a string once, at the end: pieces pushed as strings one by one cost an
** interning each and a join (l_head's first version spent a third of an
** http.serve request's head there). */
typedef struct {
  lua_State *L;
  int slot;
  char *b;
  size_t n, cap;
} headbuf;

static void hb_init(headbuf *h, lua_State *L, int slot, size_t cap) {
  h->L = L;
  h->slot = slot;
  h->n = 0;
  h->cap = cap;
  h->b = lua_newuserdatauv(L, cap, 0);
  lua_replace(L, slot);
}

static void hb_put(headbuf *h, const char *s, size_t len) {
  if (len > h->cap - h->n) {
    size_t cap = h->cap;
    char *nb;
    while (len > cap - h->n) {
      if (cap > ((size_t)-1) / 2) luaL_error(h->L, "http.head: too large");
      cap *= 2;
    }
    luaL_checkstack(h->L, 1, "http.head");
    nb = lua_newuserdatauv(h->L, cap, 0);
    memcpy(nb, h->b, h->n);
    lua_replace(h->L, h->slot);
    h->b = nb;
    h->cap = cap;
  }
  memcpy(h->b + h->n, s, len);
  h->n += len;
}

static void hb_puts(headbuf *h, const char *s) { hb_put(h, s, strlen(s)); }

/* "Name: value\r\n" of the value at the top (a string or a number), left
** where it is.  Raises on anything else, and on a CR, LF or NUL in it. */
static void put_value(headbuf *h, const char *fname, const char *name, size_t nlen) {
  lua_State *L = h->L;
  size_t len;
  const char *v;
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    herror(L, "%s: header %s: want a string or a number, got %s", fname, name,
               lua_typename(L, t));
  v = lua_tolstring(L, -1, &len);              /* (a copy: lua_next's key is untouched) */
  if (memchr(v, '\r', len) || memchr(v, '\n', len) || memchr(v, '\0', len))
    herror(L, "%s: header %s holds a CR, LF or NUL", fname, name);
  hb_put(h, name, nlen);
  hb_put(h, ": ", 2);
  hb_put(h, v, len);
  hb_put(h, "\r\n", 2);
}

/* Whether the string at idx is "close", in any case. */
static int is_close(lua_State *L, int idx) {
  size_t len, i;
  const char *v = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
  if (v == NULL || len != 5) return 0;
  for (i = 0; i < 5; i++)
    if ((v[i] | 0x20) != "close"[i]) return 0;
  return 1;
}

/* http.head(first, headers, own, fname, date, length, close [, body])
**   -> the message's bytes, and whether headers asked to close
** first: the start line (and any lines market writes before the
** program's headers), "\r\n"-ended; headers: nil, or names to a string,
** a number or a sequence of them (one line each); own: lower-cased
** names market writes itself, which headers may not hold (raises),
** except those own maps to "close": a value "close" (any case) is taken
** as the ask to close, any other raises; fname: who raises.  Then Date:
** date (if not nil), Content-Length: length (if >= 0; -1: chunked, nil:
** neither), Connection: close (if close, or asked), the blank line, and
** body.
** One C pass checks and writes the program's headers (lua/http.lua's
** answers took twice as long in Lua), into one buffer (headbuf). */
static int l_head(lua_State *L) {
  const char *fname = luaL_checkstring(L, 4);
  size_t flen, blen = 0;
  const char *first = luaL_checklstring(L, 1, &flen);
  int asked = 0;
  headbuf h;
  luaL_checktype(L, 3, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2))
    return herror(L, "%s: headers must be a table, got %s", fname, luaL_typename(L, 2));
  lua_settop(L, 9);                             /* the buffer at 9 */
  if (!lua_isnil(L, 8)) luaL_checklstring(L, 8, &blen);
  hb_init(&h, L, 9, 256 + flen + blen);
  hb_put(&h, first, flen);
  if (!lua_isnil(L, 2)) {
    lua_pushnil(L);
    while (lua_next(L, 2)) {                    /* key value */
      size_t nlen = 0, i;
      const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nlen) : NULL;
      char low[32];
      int ok = name != NULL && nlen > 0;
      for (i = 0; ok && i < nlen; i++) ok = tchar((unsigned char)name[i]);
      if (!ok) return herror(L, "%s: bad header name %s", fname, shown(L, -2));
      if (nlen <= sizeof low) {                 /* longer: no name market writes */
        for (i = 0; i < nlen; i++)
          low[i] = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] + 'a' - 'A') : name[i];
        lua_pushlstring(L, low, nlen);
        if (lua_rawget(L, 3) != LUA_TNIL) {
          if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "close") != 0)
            return herror(L, "%s: the header %s is market's to write", fname, name);
          if (!is_close(L, -2))
            return herror(L, "%s: the only %s header a handler may give is \"close\", got %s",
                              fname, name, shown(L, -2));
          asked = 1;
          lua_pop(L, 2);
          continue;
        }
        lua_pop(L, 1);
      }
      if (lua_type(L, -1) == LUA_TTABLE) {      /* key seq */
        lua_Integer k;
        for (k = 1; lua_rawgeti(L, -1, k) != LUA_TNIL; k++) {
          put_value(&h, fname, name, nlen);     /* key seq v */
          lua_pop(L, 1);
        }
        lua_pop(L, 1);
      } else {
        put_value(&h, fname, name, nlen);
      }
      lua_pop(L, 1);                            /* the value; the key stays */
    }
  }
  if (!lua_isnil(L, 5)) {
    size_t dlen;
    const char *date = luaL_checklstring(L, 5, &dlen);
    hb_puts(&h, "Date: ");
    hb_put(&h, date, dlen);
    hb_put(&h, "\r\n", 2);
  }
  if (!lua_isnil(L, 6)) {
    lua_Integer length = luaL_checkinteger(L, 6);
    if (length >= 0) {
      char digits[24];                          /* a lua_Integer's, at most 19 */
      int i = (int)sizeof digits;
      lua_Unsigned u = (lua_Unsigned)length;
      do { digits[--i] = (char)('0' + u % 10); u /= 10; } while (u > 0);
      hb_puts(&h, "Content-Length: ");
      hb_put(&h, digits + i, sizeof digits - (size_t)i);
      hb_put(&h, "\r\n", 2);
    } else {
      hb_puts(&h, "Transfer-Encoding: chunked\r\n");
    }
  }
  if (lua_toboolean(L, 7) || asked) hb_puts(&h, "Connection: close\r\n");
  hb_put(&h, "\r\n", 2);
  if (blen > 0) hb_put(&h, lua_tostring(L, 8), blen);
  lua_pushlstring(L, h.b, h.n);
  lua_pushboolean(L, asked);
  return 2;
}

/* ---- public suffixes (the cookie jar's) ------------------------------ */

/* libpsl is opened at the first look-up, as OpenSSL is at the first TLS
** connection (drivers/tls.c): linked, it brought libidn2 and libunistring
** into every program's start (0.3 ms of `market -e ''`'s 2.8, for the
** few that keep cookies across domains). */
#define LPSL_FUNCS(X) X(psl_latest) X(psl_builtin) X(psl_is_public_suffix2) X(psl_free)
#define PSL_FIELD(f) __typeof__(&f) f;
static struct { LPSL_FUNCS(PSL_FIELD) } psl;
#undef PSL_FIELD

static const char *const psl_sonames[] = { "libpsl.so.5", "libpsl.so", NULL };
static pthread_once_t psl_once = PTHREAD_ONCE_INIT;
static const char *psl_failed;
static char psl_why[256];

static void psl_load(void) {
  void *lib = mkl_dlopen(psl_sonames, "libpsl", "libpsl5", psl_why, sizeof psl_why);
  if (lib == NULL) { psl_failed = psl_why; return; }
#define PSL_LOAD(f) \
  if (!mkl_dlsym(lib, #f, (void **)&psl.f, "libpsl", psl_sonames[0], psl_why, sizeof psl_why)) { \
    psl_failed = psl_why; \
    return; \
  }
  LPSL_FUNCS(PSL_LOAD)
#undef PSL_LOAD
}

/* The list, owned when loaded from a file (freed in __gc), borrowed when
** it is the one built into libpsl (psl_builtin: static). */
typedef struct lpsl { psl_ctx_t *loaded; const psl_ctx_t *ctx; } lpsl;

static int psl_gc(lua_State *L) {
  lpsl *s = luaL_checkudata(L, 1, LPSL_MT);
  if (s->loaded != NULL) psl.psl_free(s->loaded);
  s->loaded = NULL;
  s->ctx = NULL;
  return 0;
}

/* The list is the function's upvalue, loaded when first needed: a
** program that keeps no cookies reads no file. */
static int l_public_suffix(lua_State *L) {
  lpsl *s = lua_touserdata(L, lua_upvalueindex(1));
  const char *domain = luaL_checkstring(L, 1);
  if (s->ctx == NULL) {
    pthread_once(&psl_once, psl_load);
    if (psl_failed != NULL) { luaL_pushfail(L); lua_pushstring(L, psl_failed); return 2; }
    s->loaded = psl.psl_latest(NULL);
    s->ctx = s->loaded != NULL ? s->loaded : psl.psl_builtin();
    if (s->ctx == NULL) {
      luaL_pushfail(L);
      lua_pushliteral(L, "no public suffix list (Debian: apt-get install publicsuffix)");
      return 2;
    }
  }
  /* Any: ICANN's and private domains' suffixes ("github.io") alike; the
  ** implicit "*" rule too: a label no rule names is a top-level domain. */
  lua_pushboolean(L, psl.psl_is_public_suffix2(s->ctx, domain, PSL_TYPE_ANY) != 0);
  return 1;
}

void mkl_open_http(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"feed", l_feed}, {"message", l_message}, {"reset", l_reset}, {"status", l_status},
    {"take", l_take}, {"__gc", l_gc}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"request", l_request}, {"response", l_response},
                                   {"head", l_head}, {NULL, NULL}};
  if (luaL_newmetatable(L, LHTTP_MT)) {
    luaL_setfuncs(L, methods, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  memset(lua_newuserdatauv(L, sizeof(lpsl), 0), 0, sizeof(lpsl));
  if (luaL_newmetatable(L, LPSL_MT)) {
    lua_pushcfunction(L, psl_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushcclosure(L, l_public_suffix, 1);
  lua_setfield(L, -2, "public_suffix");
  mkl_open_ws(L);
}
