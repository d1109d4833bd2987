/*
** lws.c: WebSockets (RFC 6455) for market.http (lua/http.lua:
** http.websocket's servers, http.websocket_connect's clients), on wslay's
** event layer (Debian's libwslay-dev: a
** maintained, fuzzed codec of the frames, which checks masking, reserved
** bits, opcodes, control frames, fragments, UTF-8 text and close codes,
** answers pings and closes, and leaves the I/O to its user) and libmd's
** SHA-1 (libmd-dev) for the handshake.  Internal: http.lua gets these in
** the table lhttp.c makes.
**
**   ws_accept(key)       -> the Sec-WebSocket-Accept value for a client's
**                           Sec-WebSocket-Key; nil when the key is not 16
**                           bytes in base64, as the RFC asks
**   ws_key()             -> a new Sec-WebSocket-Key: 16 random bytes in
**                           base64 (a client's)
**   ws_session(max [, client])
**                        -> one side of a WebSocket, a server's (or with
**                           client, a client's: its frames masked),
**                           taking messages of at most max bytes
**   s:feed(bytes)        -> the other side's bytes read: the messages in them
**                           queued for next(), and what wslay answers
**                           (pongs, a close) for output().  false once
**                           wslay reads no more (a close came, or the
**                           other side broke the protocol: a close with the
**                           code queued)
**   s:next()             -> the next message: opcode, payload, and a close's
**                           code (0 without one); nil when none is queued
**   s:ready()            -> whether next() has one
**   s:queue(opcode, payload) -> true; nil once no more may be sent (a close
**                           went, or is queued)
**   s:close(code, reason)-> a close queued (true; nil as queue)
**   s:output()           -> the bytes to send now ("" when none)
**   s:status()           -> close received (boolean), close sent
**                           (boolean), the code received and the code
**                           sent (RFC 6455's 1005 when none)
**
** What wslay reads is handed to it from feed's string; what it writes is
** gathered for output().  Every buffer grows with what it holds, no
** further than max for a message (no fixed buffer on the input path).
** wslay buffers no data message (no_buffering): the session puts each
** together from its frames' pieces itself, so that the memory limit
** counts a message while it comes as well as once it is queued (pool.h:
** a data message's block from mk_pool_lalloc, refused past the limit as
** a Lua state's requests are, a control message's from mk_pool_alloc,
** the output's from mk_pool_lib_realloc), and so that the
** bytes are copied once, not three times (wslay's pieces, its flattened
** message, the queue's).  The limit max then holds across a message's
** fragments here; wslay checks each frame against it too.  Control
** messages (at most 125 bytes) are still wslay's to put together.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>

#include <sha1.h>
#include <wslay/wslay.h>

#include "mkl.h"
#include "pool.h"

/* ---- the handshake ------------------------------------------------------ */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Does key, of n bytes, decode from base64 to exactly 16 bytes? */
static int key16(const char *key, size_t n) {
  size_t i;
  if (n != 24 || key[22] != '=' || key[23] != '=') return 0;
  for (i = 0; i < 22; i++)
    if (key[i] == '\0' || strchr(b64, key[i]) == NULL) return 0;
  /* the last digit's low four bits pad the 16th byte: zero */
  return (strchr(b64, key[21]) - b64) % 16 == 0;
}

/* n random bytes into buf: 0, or -1 when the system has none to give. */
static int random_bytes(uint8_t *buf, size_t n) {
  while (n > 0) {
    ssize_t got = getrandom(buf, n, 0);
    if (got < 0) return -1;               /* (EINTR is not for so few bytes) */
    buf += got;
    n -= (size_t)got;
  }
  return 0;
}

/* Three bytes as four base64 digits. */
static void b64group(const uint8_t *d, char *out) {
  uint32_t v = (uint32_t)d[0] << 16 | (uint32_t)d[1] << 8 | d[2];
  out[0] = b64[v >> 18];
  out[1] = b64[(v >> 12) & 63];
  out[2] = b64[(v >> 6) & 63];
  out[3] = b64[v & 63];
}

static int l_key(lua_State *L) {
  uint8_t d[18] = {0};                    /* 16 random, two of padding */
  char out[24];
  int i;
  if (random_bytes(d, 16) != 0) return luaL_error(L, "market.http: no random bytes for a key");
  for (i = 0; i < 6; i++) b64group(d + 3 * i, out + 4 * i);
  out[22] = out[23] = '=';
  lua_pushlstring(L, out, sizeof out);
  return 1;
}

static int l_accept(lua_State *L) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  size_t n;
  const char *key = luaL_checklstring(L, 1, &n);
  uint8_t d[SHA1_DIGEST_LENGTH + 1] = {0};   /* one byte more: seven groups of three */
  char out[28];
  SHA1_CTX c;
  int i, o = 0;
  if (!key16(key, n)) return 0;
  SHA1Init(&c);
  SHA1Update(&c, (const uint8_t *)key, n);
  SHA1Update(&c, (const uint8_t *)guid, sizeof guid - 1);
  SHA1Final(d, &c);
  for (i = 0; i < 21; i += 3, o += 4) b64group(d + i, out + o);
  out[27] = '=';                          /* 20 bytes: the last digit is padding */
  lua_pushlstring(L, out, sizeof out);
  return 1;
}

/* ---- a session ---------------------------------------------------------- */

#define LWS_MT "market.http websocket"

/* A message read, queued for next(), or a data message being put
** together: a block of sizeof(wsmsg) + cap bytes from the pool (freed by
** msgfree), owned by the session until next() takes it (or __gc frees
** it). */
typedef struct wsmsg {
  struct wsmsg *next;
  uint8_t op;
  uint16_t code;
  size_t len, cap;            /* bytes in data, and room for them */
  char data[];
} wsmsg;

/* Owns ctx (wslay_event_context_free), the queue and part (msgfree) and
** out (mk_pool_lib_free), all released in __gc. */
typedef struct wssession {
  wslay_event_context_ptr ctx;
  const char *in;             /* while feed runs: what wslay has yet to read */
  size_t inlen;
  char *out;                  /* what wslay wrote, for output() */
  size_t outn, outcap;
  wsmsg *first, *last;
  wsmsg *part;                /* the data message being put together, or NULL */
  size_t max;                 /* the most bytes a message may have */
  int indata;                 /* the frame being read is a data frame's */
  int nomem;                  /* a callback could not allocate */
} wssession;

static void msgfree(wsmsg *m) {
  if (m != NULL) mk_pool_free(m, sizeof *m + m->cap);
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *ud) {
  wssession *s = ud;
  (void)flags;
  if (s->inlen == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (len > s->inlen) len = s->inlen;
  memcpy(buf, s->in, len);
  s->in += len;
  s->inlen -= len;
  return (ssize_t)len;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud) {
  wssession *s = ud;
  (void)flags;
  if (s->outn + len > s->outcap) {
    size_t cap = s->outcap ? s->outcap : 256;
    char *p;
    while (cap < s->outn + len) cap *= 2;
    if ((p = mk_pool_lib_realloc(s->out, cap)) == NULL) {
      s->nomem = 1;
      wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
      return -1;
    }
    s->out = p;
    s->outcap = cap;
  }
  memcpy(s->out + s->outn, data, len);
  s->outn += len;
  return (ssize_t)len;
}

/* Reads no more: a close with code queued (code 0: none, for no memory),
** and the message being put together dropped. */
static void refuse(wslay_event_context_ptr ctx, wssession *s, uint16_t code) {
  if (code != 0 && wslay_event_queue_close(ctx, code, NULL, 0) == WSLAY_ERR_NOMEM) s->nomem = 1;
  wslay_event_shutdown_read(ctx);
  s->indata = 0;
  msgfree(s->part);
  s->part = NULL;
}

/* A frame starts: wslay has checked its opcode, its place in a message
** and its length against max.  A data frame's payload gets its room in
** the message being put together (its first frame makes it), unless the
** message would then be longer than max: wslay's check, made across the
** fragments. */
static void start_cb(wslay_event_context_ptr ctx,
                     const struct wslay_event_on_frame_recv_start_arg *arg, void *ud) {
  wssession *s = ud;
  wsmsg *m = s->part;
  size_t len = m != NULL ? m->len : 0, cap;
  s->indata = arg->opcode == WSLAY_CONTINUATION_FRAME || arg->opcode == WSLAY_TEXT_FRAME ||
              arg->opcode == WSLAY_BINARY_FRAME;
  /* A close's body is a code of two bytes and a reason, or nothing: one
  ** byte breaks the protocol (RFC 6455 5.5.1), which wslay took for a
  ** close without a code, and answered so. */
  if (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->payload_length == 1) {
    refuse(ctx, s, WSLAY_CODE_PROTOCOL_ERROR);
    return;
  }
  if (!s->indata) return;
  if (arg->payload_length > s->max - len) { refuse(ctx, s, WSLAY_CODE_MESSAGE_TOO_BIG); return; }
  if (m != NULL && len + arg->payload_length <= m->cap) return;
  /* Twice the room at a time, for a message of many small fragments, but
  ** no more than max; a message in one frame gets just its length. */
  cap = len + (size_t)arg->payload_length;
  if (m != NULL && cap < 2 * m->cap) cap = 2 * m->cap < s->max ? 2 * m->cap : s->max;
  m = mk_pool_lalloc(NULL, m, m != NULL ? sizeof *m + m->cap : 0, sizeof *m + cap);
  if (m == NULL) { s->nomem = 1; refuse(ctx, s, 0); return; }
  if (s->part == NULL) {
    m->next = NULL;
    m->op = arg->opcode;
    m->code = 0;
    m->len = 0;
  }
  m->cap = cap;
  s->part = m;
}

/* A piece of a frame's payload: a data frame's goes to its message (the
** room was made in start_cb); a control frame's is wslay's. */
static void chunk_cb(wslay_event_context_ptr ctx,
                     const struct wslay_event_on_frame_recv_chunk_arg *arg, void *ud) {
  wssession *s = ud;
  wsmsg *m = s->part;
  (void)ctx;
  if (!s->indata || arg->data_length == 0) return;
  memcpy(m->data + m->len, arg->data, arg->data_length);
  m->len += arg->data_length;
}

static void enqueue(wssession *s, wsmsg *m) {
  if (s->last) s->last->next = m; else s->first = m;
  s->last = m;
}

/* A message is complete: a data message is the one put together (none
** when it was refused), a control message comes whole from wslay. */
static void msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud) {
  wssession *s = ud;
  wsmsg *m;
  (void)ctx;
  if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
    if ((m = s->part) == NULL) return;
    s->part = NULL;
    enqueue(s, m);
    return;
  }
  /* (A close of one byte, refused in start_cb, still ends here: no close
  ** to hand on, the protocol error is what the other side did.) */
  if (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->msg_length == 1) return;
  if ((m = mk_pool_alloc(sizeof *m + arg->msg_length)) == NULL) { s->nomem = 1; return; }
  m->next = NULL;
  m->op = arg->opcode;
  m->code = arg->status_code;
  m->len = m->cap = arg->msg_length;
  if (m->len > 0) memcpy(m->data, arg->msg, m->len);
  enqueue(s, m);
}

/* A client's masks. */
static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
  (void)ud;
  if (random_bytes(buf, len) == 0) return 0;
  wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
  return -1;
}

static wssession *checksession(lua_State *L) {
  wssession *s = luaL_checkudata(L, 1, LWS_MT);
  if (s->ctx == NULL) luaL_error(L, "market.http: a WebSocket session used after it was freed");
  return s;
}

static int l_session(lua_State *L) {
  static const struct wslay_event_callbacks cbs = {
    .recv_callback = recv_cb, .send_callback = send_cb, .genmask_callback = genmask_cb,
    .on_msg_recv_callback = msg_cb, .on_frame_recv_start_callback = start_cb,
    .on_frame_recv_chunk_callback = chunk_cb,
  };
  lua_Integer max = luaL_checkinteger(L, 1);
  int client = lua_toboolean(L, 2), r;
  wssession *s;
  luaL_argcheck(L, max > 0, 1, "the limit must be a positive number of bytes");
  s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, LWS_MT);
  r = client ? wslay_event_context_client_init(&s->ctx, &cbs, s)
             : wslay_event_context_server_init(&s->ctx, &cbs, s);
  if (r != 0) {
    s->ctx = NULL;
    return luaL_error(L, "market.http: out of memory");
  }
  s->max = (uint64_t)max > SIZE_MAX - sizeof(wsmsg) ? SIZE_MAX - sizeof(wsmsg) : (size_t)max;
  wslay_event_config_set_max_recv_msg_length(s->ctx, (uint64_t)max);
  wslay_event_config_set_no_buffering(s->ctx, 1);
  return 1;
}

/* Raises when a callback ran out of memory (after the call it was in). */
static void checkmem(lua_State *L, wssession *s) {
  if (s->nomem) {
    s->nomem = 0;
    luaL_error(L, "market.http: out of memory");
  }
}

static int l_feed(lua_State *L) {
  wssession *s = checksession(L);
  size_t n;
  const char *bytes = luaL_checklstring(L, 2, &n);
  s->in = bytes;
  s->inlen = n;
  /* A negative result is a broken frame (wslay queued a close) or no
  ** memory: either way it reads no more, which status() tells. */
  wslay_event_recv(s->ctx);
  s->in = NULL;
  s->inlen = 0;
  checkmem(L, s);
  lua_pushboolean(L, wslay_event_want_read(s->ctx));
  return 1;
}

static int l_next(lua_State *L) {
  wssession *s = checksession(L);
  wsmsg *m = s->first;
  if (m == NULL) return 0;
  lua_pushinteger(L, m->op);
  lua_pushlstring(L, m->data, m->len);
  lua_pushinteger(L, m->code);
  s->first = m->next;
  if (s->first == NULL) s->last = NULL;
  msgfree(m);
  return 3;
}

static int l_ready(lua_State *L) {
  lua_pushboolean(L, checksession(L)->first != NULL);
  return 1;
}

/* What queueing a message (or a close) came to: true; nil when no more
** may be sent; raises when out of memory. */
static int queued(lua_State *L, int r) {
  if (r == WSLAY_ERR_NOMEM) return luaL_error(L, "market.http: out of memory");
  if (r != 0) return 0;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_queue(lua_State *L) {
  wssession *s = checksession(L);
  lua_Integer op = luaL_checkinteger(L, 2);
  size_t n;
  const char *payload = luaL_checklstring(L, 3, &n);
  struct wslay_event_msg msg;
  msg.opcode = (uint8_t)op;
  msg.msg = (const uint8_t *)payload;
  msg.msg_length = n;
  return queued(L, wslay_event_queue_msg(s->ctx, &msg));
}

static int l_close(lua_State *L) {
  wssession *s = checksession(L);
  lua_Integer code = luaL_checkinteger(L, 2);
  size_t n = 0;
  const char *reason = luaL_optlstring(L, 3, "", &n);
  return queued(L, wslay_event_queue_close(s->ctx, (uint16_t)code, (const uint8_t *)reason, n));
}

static int l_output(lua_State *L) {
  wssession *s = checksession(L);
  s->outn = 0;
  wslay_event_send(s->ctx);
  checkmem(L, s);
  lua_pushlstring(L, s->out ? s->out : "", s->outn);
  s->outn = 0;
  if (s->outcap > 64 * 1024) {          /* a large message's room: not kept while idle */
    mk_pool_lib_free(s->out);
    s->out = NULL;
    s->outcap = 0;
  }
  return 1;
}

static int l_status(lua_State *L) {
  wssession *s = checksession(L);
  lua_pushboolean(L, wslay_event_get_close_received(s->ctx));
  lua_pushboolean(L, wslay_event_get_close_sent(s->ctx));
  lua_pushinteger(L, wslay_event_get_status_code_received(s->ctx));
  lua_pushinteger(L, wslay_event_get_status_code_sent(s->ctx));
  return 4;
}

static int l_gc(lua_State *L) {
  wssession *s = luaL_checkudata(L, 1, LWS_MT);
  while (s->first) {
    wsmsg *m = s->first;
    s->first = m->next;
    msgfree(m);
  }
  s->last = NULL;
  msgfree(s->part);
  s->part = NULL;
  if (s->ctx) wslay_event_context_free(s->ctx);
  s->ctx = NULL;
  mk_pool_lib_free(s->out);
  s->out = NULL;
  s->outn = s->outcap = 0;
  return 0;
}

/* Adds ws_accept, ws_key and ws_session to the table at the top. */
void mkl_open_ws(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"feed", l_feed}, {"next", l_next}, {"ready", l_ready}, {"queue", l_queue},
    {"close", l_close}, {"output", l_output}, {"status", l_status}, {"__gc", l_gc},
    {NULL, NULL}};
  static const luaL_Reg funcs[] = {
    {"ws_accept", l_accept}, {"ws_key", l_key}, {"ws_session", l_session}, {NULL, NULL}};
  if (luaL_newmetatable(L, LWS_MT)) {
    luaL_setfuncs(L, methods, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
