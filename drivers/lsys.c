/*
** lsys.c: `market.sys`, thin non-blocking socket system calls for the tcp
** and udp drivers (internal: not part of the public API).
**
** Everything is non-blocking and close-on-exec; every failure is a value
** (nil, message), never a Lua error (bad arguments aside) and never a
** crash.  A message is strerror's text with a lower-case first letter
** ("connection refused").  "Would block" is distinguished as false:
**
**   sys.resolve(host, port, "tcp"|"udp" [, numeric_only])
**                                          -> addrs | req | nil, msg
**                                             (numeric_only: addrs | false)
**       addrs: a list of {sa=<sockaddr bytes>, host=<numeric text>,
**       port=n, family=4|6}, at once when host is numeric.  Otherwise a
**       request whose getaddrinfo runs on its own thread: req:fd() is a pipe
**       that becomes readable when req:result() (-> addrs | nil, msg) is
**       ready; req:close() abandons it (the thread cleans up after itself).
**   sys.tcp_listen(port [, backlog [, reuseport [, host]]])
**                                         -> sock | nil, msg  (dual stack, SO_REUSEADDR;
**                                            SO_REUSEPORT when reuseport is true; host:
**                                            a numeric address to bind instead of all)
**   sys.unix_listen(path [, backlog])     -> sock | nil, msg  (a Unix socket: see there)
**   sys.tcp_connect(sa)                   -> sock, "connected"|"inprogress" | nil, msg
**   sys.udp_bind(port [, reuseport])      -> sock | nil, msg  (dual stack; 0: any port;
**                                            no SO_REUSEADDR: a port in use is refused)
**   sys.fd_read(fd [, max])               -> string | nil, "eof" | false (nothing now; never
**                                            blocks, on a blocking fd too) | nil, msg
**   sys.std_take(fd)                      -> stream | nil, msg  (fd 0 or 1: market.stdio)
**   sys.close_at_end(x)                   -> x: the socket, stream or request x
**                                            closes when the calling process ends,
**                                            however it ends (a killed one too)
**   sys.owner()                           -> a table of the running process's own,
**                                            the same at each call and no other
**                                            process's while it is held; nothing
**                                            from a coroutine of the program's
**                                            own (the tcp objects' owner check)
**   sys.at_return(fn)                     fn runs in the running process once its
**                                            boot function has returned (http.lua's
**                                            kept connections)
**   sock:fd()  sock:local_port()  sock:peer() -> host, port
**   sock:read([max])        -> string | nil, "eof" | false | nil, msg
**   sock:write(s [, i])     -> bytes written from s[i..] (0: would block) | nil, msg
**   sock:so_error()         -> nil (connected) | msg          (after connect)
**   sock:shutdown()         -> true | nil, msg                (SHUT_WR)
**   sock:accept()           -> sock, host, port | false | nil, msg
**   sock:recvfrom()         -> data, host, port | false | nil, msg  (datagrams up to 65,535 bytes)
**   sock:sendto(s, sa)      -> bytes | false | nil, msg
**   sock:close()            (also on garbage collection; a ground watch on
**                           the descriptor ends first: mk_ground_fd_closed)
**   stream:fd()  stream:read([max])  stream:write(s [, i])   as a socket's
**   stream:close([finish])  give the descriptor back as it was taken (also
**                           on garbage collection and at exit); finish:
**                           end the stream too (see std_take)
**   sys.set_resolve_delay(ms)  for tests: resolutions on a thread sleep first
**   sys.lose_spare()        for tests: close the spare descriptor listeners
**                           keep for refusing connections (mkd_accept_refuse)
**   sys.tcp_accept, sys.tcp_manage, sys.tcp_stats, sys.tcp_conns,
**   sys.tcp_settings: the TCP connection managers, native processes
**       (drivers/tcpconn.c)
**   sys.nats_connect, sys.host_pid: the cluster driver's NATS connection
**       (drivers/lcluster.c)
**
** The socket, accept, connect and resolver calls are also C functions for
** tcpconn.c (drivers/mkd.h).
*/
#include <arpa/inet.h>
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "ground.h"
#include "mkd.h"
#include "mkl.h"

#define SOCK_MT "market.sys.socket"
#define REQ_MT "market.sys.resolve"
#define STD_MT "market.sys.stream"
#define READ_MAX 65536
#define DGRAM_MAX 65536            /* the largest UDP payload is 65,535 (IPv6), 65,507 (IPv4) */

int luaopen_market_sys(lua_State *L);

/* ---- errors ------------------------------------------------------------- */

static void pushmsg(lua_State *L, const char *s) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (*s) {
    luaL_addchar(&b, (char)tolower((unsigned char)*s));
    luaL_addstring(&b, s + 1);
  }
  luaL_pushresult(&b);
}

static int fail(lua_State *L, int err) {
  lua_pushnil(L);
  pushmsg(L, strerror(err));
  return 2;
}

const char *mkd_strerror(int err, char *buf, size_t size) {
  snprintf(buf, size, "%s", strerror(err));
  buf[0] = (char)tolower((unsigned char)buf[0]);
  return buf;
}

static int would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

static void pin(void) {
  Dl_info info;
  if (dladdr((void *)pin, &info) && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Stock lua5.4 unloads market.so when the Lua state that loaded it
** closes, and a C host may close its state and go on: code of market's
** that outlives the state (OpenSSL's allocator, tls.c; libnats's
** callbacks, lcluster.c) would then be unmapped under whoever calls it.
** So market stays in memory for the life of the process once it hands
** such code out (RTLD_NODELETE on itself); a program that never does
** unloads as before.  The market binary has market linked in: nothing
** to do. */
void mkd_pin_self(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, pin);
}

/* ---- addresses ---------------------------------------------------------- */

/* An IPv4-mapped IPv6 address as the IPv4 one it stands for. */
static socklen_t unmap(struct sockaddr_storage *ss, socklen_t len) {
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
  if (ss->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
    struct sockaddr_in s4;
    memset(&s4, 0, sizeof s4);
    s4.sin_family = AF_INET;
    s4.sin_port = s6->sin6_port;
    memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
    memcpy(ss, &s4, sizeof s4);
    return sizeof s4;
  }
  return len;
}

/* Numeric host text and port of sa. */
static void addrtext(const struct sockaddr *sa, char *host, size_t size, int *port) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &s4->sin_addr, host, (socklen_t)size);
    *port = ntohs(s4->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &s6->sin6_addr, host, (socklen_t)size);
    /* A link-local address means nothing without its interface: keep the
    ** scope as "%eth0" (getaddrinfo reads it back), or a reply to such a
    ** peer could not be sent. */
    if (s6->sin6_scope_id != 0) {
      char ifname[IF_NAMESIZE];
      size_t n = strlen(host);
      if (if_indextoname(s6->sin6_scope_id, ifname) != NULL)
        snprintf(host + n, size - n, "%%%s", ifname);
      else
        snprintf(host + n, size - n, "%%%u", (unsigned)s6->sin6_scope_id);
    }
    *port = ntohs(s6->sin6_port);
  } else if (sa->sa_family == AF_UNIX) {
    /* Zeroed beyond what the kernel filled in (accept_fd): "" when the
    ** peer has no name, and for Linux's abstract names (a NUL first). */
    const struct sockaddr_un *su = (const struct sockaddr_un *)sa;
    snprintf(host, size, "%.*s", (int)sizeof su->sun_path, su->sun_path);
    *port = 0;
  } else {
    snprintf(host, size, "?");
    *port = 0;
  }
}

/* Push numeric host text and port of sa; returns 2. */
static int pushaddr(lua_State *L, const struct sockaddr *sa) {
  char host[MKD_HOST_MAX];
  int port;
  addrtext(sa, host, sizeof host, &port);
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}

/* Push the addrinfo list as a Lua list of address tables. */
static void pushaddrs(lua_State *L, const struct addrinfo *ai) {
  int n = 0;
  lua_newtable(L);
  for (; ai; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, (const char *)ai->ai_addr, ai->ai_addrlen);
    lua_setfield(L, -2, "sa");
    pushaddr(L, ai->ai_addr);
    lua_setfield(L, -3, "port");
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, ai->ai_family == AF_INET ? 4 : 6);
    lua_setfield(L, -2, "family");
    lua_rawseti(L, -2, ++n);
  }
}

static const char *gai_message(int rc, int syserr) {
  if (rc == EAI_SYSTEM) return strerror(syserr);
  return gai_strerror(rc);
}

/* ---- sockets ------------------------------------------------------------ */

/* A socket userdata.  A Unix listener's holds its path after it (extra
** bytes of the userdata); `path` points there once the socket file is made,
** and `dev`, `ino` say which file that is, so that closing removes it only
** while it is still this socket's. */
typedef struct sock {
  int fd;
  int family;
  const char *path;           /* NULL: no socket file to remove */
  dev_t dev;
  ino_t ino;
} sock;

static sock *newsock_extra(lua_State *L, int fd, int family, size_t extra) {
  sock *s = lua_newuserdatauv(L, sizeof *s + extra, 0);
  s->fd = fd;
  s->family = family;
  s->path = NULL;
  luaL_setmetatable(L, SOCK_MT);
  return s;
}

static sock *newsock(lua_State *L, int fd, int family) { return newsock_extra(L, fd, family, 0); }

static sock *checksock(lua_State *L) {
  sock *s = luaL_checkudata(L, 1, SOCK_MT);
  if (s->fd < 0) luaL_error(L, "market.sys: socket is closed");
  return s;
}

int mkd_sockfd(lua_State *L, int idx) {
  sock *s = luaL_checkudata(L, idx, SOCK_MT);
  if (s->fd < 0) luaL_error(L, "market.sys: socket is closed");
  return s->fd;
}

int mkd_sock_take(lua_State *L, int idx) {
  sock *s = luaL_checkudata(L, idx, SOCK_MT);
  int fd = s->fd;
  if (fd < 0) luaL_error(L, "market.sys: socket is closed");
  s->fd = -1;
  return fd;
}

/* Closing a descriptor a ground event may watch: the ground hears of it
** first, so libev never meets a closed descriptor (ground.h). */
void mkd_close_watched(int fd) {
  mk_ground_fd_closed(fd);
  close(fd);
}

/* A Unix listener's socket file goes with it, unless another has taken
** its place meanwhile (a second program listening on the path). */
static void unbind(sock *s) {
  struct stat st;
  if (s->path == NULL) return;
  if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == s->dev &&
      st.st_ino == s->ino)
    unlink(s->path);
  s->path = NULL;
}

static int s_close(lua_State *L) {
  sock *s = luaL_checkudata(L, 1, SOCK_MT);
  if (s->fd >= 0) { mkd_close_watched(s->fd); s->fd = -1; }
  unbind(s);
  return 0;
}

/* sys.close_at_end(x): x closes when the calling process ends, however
** it ends (mkl_close_at_end): a killed one runs no handler that could, and
** waiting for a collection kept a listener's port, the standard streams
** (and their O_NONBLOCK) and a resolver's pipe held meanwhile. */
static int l_close_at_end(lua_State *L) {
  luaL_argexpected(L, luaL_testudata(L, 1, SOCK_MT) || luaL_testudata(L, 1, STD_MT) ||
                   luaL_testudata(L, 1, REQ_MT), 1, "market.sys socket, stream or request");
  if (mkl_close_at_end(L, 1) != 0) luaL_error(L, "sys.close_at_end: not inside a market process");
  lua_settop(L, 1);
  return 1;
}

/* sys.owner(): the running process's context table (mkl_pushctx), which
** a connection object compares with the one it was made under: a table
** lookup where market.self made two strings at every method call. */
static int l_owner(lua_State *L) { return mkl_pushctx(L); }

/* sys.at_return(fn): fn runs in the running process once its boot
** function has returned (mkl.h, MKL_CTX_AT_RETURN; one per process, the
** last set): http.lua closes the connections kept for the process's next
** request, which held a script's program open after its work was done.
** Raises outside a process. */
static int l_at_return(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (!mkl_set_at_return(L, 1)) return luaL_error(L, "sys.at_return: not inside a market process");
  return 0;
}

/* sys.send(ctor, f1, ..., fn): the running process sends the record
** ctor(f1, ..., fn) now, as market.perform(market.send(ctor(...))) does,
** without the record's box and the action's userdata that a connection
** object made for every chunk it sent, for the collector to free
** (docs/performance.md, "bench-http").  Raises as ctor(...) does, and
** outside a process. */
static int l_send(lua_State *L) {
  mk_proc *p = mkl_current(L);
  mk_term *t;
  if (p == NULL) return luaL_error(L, "sys.send: not inside a market process");
  t = mkl_torecord(L);
  mkl_send(p, t);
  mk_unref(t);
  if (!mk_proc_alive(p)) return mkl_stop_dead(L);   /* (as market.perform) */
  return 0;
}

static int s_fd(lua_State *L) {
  sock *s = luaL_checkudata(L, 1, SOCK_MT);
  if (s->fd < 0) return 0;
  lua_pushinteger(L, s->fd);
  return 1;
}

static int s_tostring(lua_State *L) {
  sock *s = luaL_checkudata(L, 1, SOCK_MT);
  lua_pushfstring(L, "socket(%d)", s->fd);
  return 1;
}

/* A dual-stack socket bound to the wildcard address on port.  With
** reuseport, other sockets (other processes': market --workers) may bind
** the same port, and the kernel spreads connections or datagrams over
** them. */
static int bound_socket(lua_State *L, int type, lua_Integer port, int reuseport, int *familyp) {
  int fd, one = 1, zero = 0, family = AF_INET6, err;
  fd = socket(AF_INET6, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 && (errno == EAFNOSUPPORT || errno == EPROTONOSUPPORT)) {
    family = AF_INET;
    fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  }
  if (fd < 0) return -1;
  /* SO_REUSEADDR lets a listener rebind over connections in TIME_WAIT.
  ** Not on a datagram socket: there it lets two sockets bind one port,
  ** even through bind(0) (the kernel may hand out a port a listener
  ** holds, and the listener's datagrams then go astray). */
  if (type == SOCK_STREAM) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  if (family == AF_INET6) {
    struct sockaddr_in6 a;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0) { *familyp = family; return fd; }
  } else {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0) { *familyp = family; return fd; }
  }
  err = errno;
  close(fd);
  errno = err;
  return -1;
}

/* One descriptor kept open (on /dev/null) for when the process runs out:
** closing it makes room to accept a waiting connection only to close it,
** so the client hears no at once instead of hanging in the listen backlog
** (libev's documentation, "the special problem of accept()ing when you
** can't").  Opened by the first listener, kept for the program's life.
** It can be lost: another thread (a resolver's getaddrinfo, a host's) may
** take the slot between the close and the reopen in mkd_accept_refuse,
** and the reopen fails.  So every accept opens it again if it is missing,
** which succeeds as soon as a descriptor is free. */
static int spare_fd = -1, spare_wanted;

static void open_spare(void) {
  if (spare_wanted && spare_fd < 0) spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* A stream socket bound to the numeric address host on port (no name
** lookup: a listener's address is the machine's own, and a resolver may
** block); -1 with errno, or -2 with *why when host is no address. */
static int host_socket(const char *host, lua_Integer port, int reuseport, int *familyp,
                       const char **why) {
  struct addrinfo hints, *ai;
  char serv[8];
  int fd, one = 1, err, rc;
  memset(&hints, 0, sizeof hints);
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(serv, sizeof serv, "%d", (int)port);
  if ((rc = getaddrinfo(host, serv, &hints, &ai)) != 0) {
    *why = rc == EAI_NONAME ? "not a numeric IP address" : gai_strerror(rc);
    return -2;
  }
  fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno; close(fd); errno = err; fd = -1;
    }
  }
  *familyp = ai->ai_family;
  freeaddrinfo(ai);
  return fd;
}

/* A port to bind or resolve: the kernel's EINVAL would say "invalid
** argument", and one past 65535 would be taken modulo 65536. */
#define BADPORT "port out of range (0 to 65535)"
static int badport(lua_State *L, lua_Integer port) {
  if (port >= 0 && port <= 65535) return 0;
  luaL_pushfail(L);
  lua_pushliteral(L, BADPORT);
  return 1;
}

static int l_tcp_listen(lua_State *L) {
  lua_Integer port = luaL_checkinteger(L, 1);
  int backlog = (int)luaL_optinteger(L, 2, 128), reuseport = lua_toboolean(L, 3), family, fd, err;
  size_t hn = 0;
  const char *host = luaL_optlstring(L, 4, NULL, &hn), *why = NULL;
  /* getaddrinfo reads a C string: "127.0.0.1\0x" would bind 127.0.0.1. */
  if (host && (hn == 0 || memchr(host, '\0', hn) != NULL)) {
    luaL_pushfail(L);
    lua_pushstring(L, hn == 0 ? "empty host name" : "host holds a NUL byte");
    return 2;
  }
  if (badport(L, port)) return 2;
  spare_wanted = 1;
  open_spare();
  fd = host ? host_socket(host, port, reuseport, &family, &why)
            : bound_socket(L, SOCK_STREAM, port, reuseport, &family);
  if (fd == -2) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", host, why);
    return 2;
  }
  if (fd < 0) return fail(L, errno);
  if (listen(fd, backlog) != 0) { err = errno; close(fd); return fail(L, err); }
  newsock(L, fd, family);
  return 1;
}

int mkd_unix_addr(const char *s, size_t n, struct sockaddr_un *sa, socklen_t *len, char *why,
                  size_t size) {
  if (n == 0) { snprintf(why, size, "empty path"); return -1; }
  if (memchr(s, '\0', n) != NULL) { snprintf(why, size, "path holds a NUL byte"); return -1; }
  if (n >= sizeof sa->sun_path) {
    snprintf(why, size, "path of %zu bytes is longer than a Unix socket's (at most %zu)", n,
             sizeof sa->sun_path - 1);
    return -1;
  }
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, s, n);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return 0;
}

/* After bind found the path taken: whether what is there is a socket file
** nobody listens on any more (connecting to it is refused; a listener
** that died leaves one), which may go.  Otherwise *why says what is there. */
static int stale(const struct sockaddr_un *sa, socklen_t len, const char **why) {
  struct stat st;
  int fd, gone;
  if (lstat(sa->sun_path, &st) != 0) return errno == ENOENT;   /* gone meanwhile */
  if (!S_ISSOCK(st.st_mode)) { *why = "a file that is not a socket is in the way"; return 0; }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  gone = connect(fd, (const struct sockaddr *)sa, len) != 0 && errno == ECONNREFUSED;
  close(fd);
  return gone;
}

/* sys.unix_listen(path [, backlog]): a listening Unix stream socket whose
** file is removed when it closes.  A stale socket file is replaced. */
static int l_unix_listen(lua_State *L) {
  size_t n;
  const char *path = luaL_checklstring(L, 1, &n);
  int backlog = (int)luaL_optinteger(L, 2, 128), fd, rc, err;
  const char *why = NULL;
  char msg[128];
  struct sockaddr_un sa;
  socklen_t len;
  struct stat st;
  sock *s;
  if (mkd_unix_addr(path, n, &sa, &len, msg, sizeof msg) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  /* The userdata first: nothing can fail to be allocated once the file
  ** exists. */
  spare_wanted = 1;
  open_spare();
  s = newsock_extra(L, -1, AF_UNIX, n + 1);
  memcpy(s + 1, path, n + 1);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(L, errno);
  rc = bind(fd, (const struct sockaddr *)&sa, len);
  if (rc != 0 && errno == EADDRINUSE && stale(&sa, len, &why)) {
    unlink(path);
    rc = bind(fd, (const struct sockaddr *)&sa, len);
  }
  if (rc != 0) {
    err = errno;
    close(fd);
    if (why) { lua_pushnil(L); lua_pushstring(L, why); return 2; }
    return fail(L, err);
  }
  if (listen(fd, backlog) != 0 || lstat(path, &st) != 0) {
    err = errno;
    close(fd);
    unlink(path);
    return fail(L, err);
  }
  s->fd = fd;
  s->path = (const char *)(s + 1);
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  return 1;
}

static int l_udp_bind(lua_State *L) {
  lua_Integer port = luaL_optinteger(L, 1, 0);
  int family, fd;
  if (badport(L, port)) return 2;
  fd = bound_socket(L, SOCK_DGRAM, port, lua_toboolean(L, 2), &family);
  if (fd < 0) return fail(L, errno);
  newsock(L, fd, family);
  return 1;
}

static const struct sockaddr *checksa(lua_State *L, int idx, socklen_t *len) {
  size_t n;
  const char *s = luaL_checklstring(L, idx, &n);
  const struct sockaddr *sa = (const struct sockaddr *)s;
  if (n < sizeof(sa_family_t) ||
      (sa->sa_family == AF_INET && n != sizeof(struct sockaddr_in)) ||
      (sa->sa_family == AF_INET6 && n != sizeof(struct sockaddr_in6)) ||
      (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
    luaL_argerror(L, idx, "not a socket address from sys.resolve");
  *len = (socklen_t)n;
  return sa;
}

int mkd_tcp_connect(const struct sockaddr *sa, socklen_t len, int *inprogress) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1, err;
  if (fd < 0) return -1;
  if (sa->sa_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, sa, len) == 0) { *inprogress = 0; return fd; }
  if (errno == EINPROGRESS || errno == EINTR) { *inprogress = 1; return fd; }
  err = errno;
  close(fd);
  errno = err;
  return -1;
}

static int l_tcp_connect(lua_State *L) {
  socklen_t len;
  const struct sockaddr *sa = checksa(L, 1, &len);
  int inprogress, fd = mkd_tcp_connect(sa, len, &inprogress);
  if (fd < 0) return fail(L, errno);
  newsock(L, fd, sa->sa_family);
  if (inprogress) lua_pushliteral(L, "inprogress"); else lua_pushliteral(L, "connected");
  return 2;
}

int mkd_so_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  return err;
}

static int s_so_error(lua_State *L) {
  sock *s = checksock(L);
  int err = mkd_so_error(s->fd);
  if (err == 0) return 0;
  pushmsg(L, strerror(err));
  return 1;
}

/* A scratch buffer shared by every read (upvalue 1 of the functions). */
static char *scratch(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

static int readfd(lua_State *L, int fd, int issock, lua_Integer max) {
  char *buf = scratch(L);
  ssize_t n;
  if (max <= 0 || max > READ_MAX) max = READ_MAX;
  do {
    n = issock ? recv(fd, buf, (size_t)max, 0) : read(fd, buf, (size_t)max);
  } while (n < 0 && errno == EINTR);
  if (n > 0) { lua_pushlstring(L, buf, (size_t)n); return 1; }
  if (n == 0) { lua_pushnil(L); lua_pushliteral(L, "eof"); return 2; }
  if (would_block(errno)) { lua_pushboolean(L, 0); return 1; }
  return fail(L, errno);
}

static int s_read(lua_State *L) {
  sock *s = checksock(L);
  return readfd(L, s->fd, 1, luaL_optinteger(L, 2, READ_MAX));
}

/* A descriptor read here may be blocking (market -i leaves standard
** input so, lua/repl.lua): it is read only when poll says it has
** something, so that a readable event that was not one (a message
** forged by a process) cannot hold the VM in read(2). */
static int l_fd_read(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1), n;
  struct pollfd p;
  p.fd = fd;
  p.events = POLLIN;
  do n = poll(&p, 1, 0); while (n < 0 && errno == EINTR);
  if (n < 0) return fail(L, errno);
  if (p.revents & POLLNVAL) return fail(L, EBADF);
  if (n == 0) { lua_pushboolean(L, 0); return 1; }
  return readfd(L, fd, 0, luaL_optinteger(L, 2, READ_MAX));
}

/* Write s[i..] (s at stack index 2, i at 3) to fd: send() for a socket,
** so that a peer gone is EPIPE without SIGPIPE; write() otherwise (a pipe
** or a terminal: SIGPIPE is ignored by every host, market.h). */
static int writefd(lua_State *L, int fd, int issock) {
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  ssize_t n;
  if (i < 1) i = 1;
  if ((size_t)i > len) { lua_pushinteger(L, 0); return 1; }
  do {
    n = issock ? send(fd, data + i - 1, len - (size_t)(i - 1), MSG_NOSIGNAL)
               : write(fd, data + i - 1, len - (size_t)(i - 1));
  } while (n < 0 && errno == EINTR);
  if (n >= 0) { lua_pushinteger(L, n); return 1; }
  if (would_block(errno)) { lua_pushinteger(L, 0); return 1; }
  return fail(L, errno);
}

static int s_write(lua_State *L) {
  sock *s = checksock(L);
  return writefd(L, s->fd, 1);
}

static int s_shutdown(lua_State *L) {
  sock *s = checksock(L);
  if (shutdown(s->fd, SHUT_WR) != 0 && errno != ENOTCONN) return fail(L, errno);
  lua_pushboolean(L, 1);
  return 1;
}

static int accept_fd(int lfd, struct sockaddr_storage *ss, socklen_t *len) {
  int fd, one = 1;
  memset(ss, 0, sizeof *ss);      /* (a Unix peer's path: addrtext) */
  do {
    *len = sizeof *ss;
    fd = accept4(lfd, (struct sockaddr *)ss, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (would_block(errno) || errno == ECONNABORTED || errno == EPROTO) errno = EAGAIN;
    return -1;
  }
  if (ss->ss_family != AF_UNIX) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int accept_peer(int lfd, char *host, size_t hostsize, int *port) {
  struct sockaddr_storage ss;
  socklen_t len;
  int fd = accept_fd(lfd, &ss, &len);
  if (fd >= 0) {
    unmap(&ss, len);
    addrtext((struct sockaddr *)&ss, host, hostsize, port);
  }
  return fd;
}

int mkd_accept(int lfd, char *host, size_t hostsize, int *port) {
  open_spare();                /* (if it was lost: before this takes the slot) */
  return accept_peer(lfd, host, hostsize, port);
}

int mkd_accept_refuse(int lfd, char *host, size_t hostsize, int *port) {
  int fd, err;
  open_spare();
  if (spare_fd < 0) { errno = EMFILE; return -1; }
  close(spare_fd);
  spare_fd = -1;
  fd = accept_peer(lfd, host, hostsize, port);
  err = errno;
  if (fd >= 0) close(fd);
  open_spare();
  if (fd < 0) { errno = err; return -1; }
  return 0;
}

static int s_accept(lua_State *L) {
  sock *s = checksock(L);
  struct sockaddr_storage ss;
  socklen_t len;
  int fd = accept_fd(s->fd, &ss, &len);
  if (fd < 0) {
    if (errno == EAGAIN) { lua_pushboolean(L, 0); return 1; }
    return fail(L, errno);
  }
  newsock(L, fd, ss.ss_family);
  unmap(&ss, len);
  pushaddr(L, (struct sockaddr *)&ss);
  return 3;
}

static int s_local_port(lua_State *L) {
  sock *s = checksock(L);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(s->fd, (struct sockaddr *)&ss, &len) != 0) return fail(L, errno);
  pushaddr(L, (struct sockaddr *)&ss);
  lua_remove(L, -2);
  return 1;
}

static int s_peer(lua_State *L) {
  sock *s = checksock(L);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getpeername(s->fd, (struct sockaddr *)&ss, &len) != 0) return fail(L, errno);
  unmap(&ss, len);
  return pushaddr(L, (struct sockaddr *)&ss);
}

static int s_recvfrom(lua_State *L) {
  sock *s = checksock(L);
  char *buf = scratch(L);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t n;
  do {
    n = recvfrom(s->fd, buf, DGRAM_MAX, MSG_TRUNC, (struct sockaddr *)&ss, &len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (would_block(errno)) { lua_pushboolean(L, 0); return 1; }
    return fail(L, errno);
  }
  if (n > DGRAM_MAX) n = DGRAM_MAX;     /* cannot happen for UDP */
  lua_pushlstring(L, buf, (size_t)n);
  unmap(&ss, len);
  pushaddr(L, (struct sockaddr *)&ss);
  return 3;
}

static int s_sendto(lua_State *L) {
  sock *s = checksock(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  socklen_t salen;
  const struct sockaddr *sa = checksa(L, 3, &salen);
  struct sockaddr_in6 mapped;
  ssize_t n;
  if (s->family == AF_INET6 && sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    memset(&mapped, 0, sizeof mapped);
    mapped.sin6_family = AF_INET6;
    mapped.sin6_port = s4->sin_port;
    mapped.sin6_addr.s6_addr[10] = 0xff;
    mapped.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&mapped.sin6_addr.s6_addr[12], &s4->sin_addr, 4);
    sa = (const struct sockaddr *)&mapped;
    salen = sizeof mapped;
  } else if (s->family == AF_INET && sa->sa_family == AF_INET6) {
    return fail(L, EAFNOSUPPORT);
  }
  do {
    n = sendto(s->fd, data, len, MSG_NOSIGNAL, sa, salen);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) { lua_pushinteger(L, n); return 1; }
  if (would_block(errno)) { lua_pushboolean(L, 0); return 1; }
  return fail(L, errno);
}

/* ---- standard input and output (market.stdio) ----------------------------- */

/* The stdio driver (drivers/stdio.lua) holds descriptor 0 or 1 through a
** stream, non-blocking while it holds it.  O_NONBLOCK belongs to the open
** file, which the shell and the programs of a pipeline share (a terminal
** above all), so the flags found are put back when the stream is let go:
** close(), garbage collection, or exit (an atexit handler), whichever
** comes first.  One stream per descriptor at a time: two readers of
** standard input would each get some of the lines.
**
** Descriptors 0 and 1 are often one open file themselves (a terminal, a
** socket from socat's EXEC or inetd): then the flags are one set, found
** by whichever was taken first, and put back only when the last of the
** two is let go; the first to go leaves them alone, as the other still
** needs O_NONBLOCK.  `shared` says so for both entries. */
static struct { int held; int flags; int shared; } stdfds[2];

static void std_let_go(int fd) {
  int other = 1 - fd;
  if (!stdfds[fd].held) return;
  stdfds[fd].held = 0;
  if (stdfds[fd].shared) {
    stdfds[fd].shared = stdfds[other].shared = 0;
    if (stdfds[other].held) return;     /* the other puts them back */
  }
  fcntl(fd, F_SETFL, stdfds[fd].flags);
}

static void std_at_exit(void) {
  std_let_go(0);
  std_let_go(1);
}

/* Whether fd, whose flags are `flags`, is the same open file as the other
** standard descriptor, held.  Only the one case that matters is asked:
** fd found non-blocking while the other was found blocking.  Otherwise
** fd's own flags are right either way (if not shared, they are its own;
** if shared, the same flags less O_NONBLOCK, which was there from the
** start).  Neither fstat (a terminal opened twice is one inode, two open
** files, with the same flags) nor kcmp(2) (Linux only, and refused by
** many containers' seccomp filters) answers for certain everywhere, so
** ask the open file itself: the other descriptor is set back as it was
** found, blocking, for a moment, and fd is shared if it follows. */
static int std_shares(int fd, int flags) {
  int other = 1 - fd, now, cur;
  if (!stdfds[other].held || !(flags & O_NONBLOCK) || (stdfds[other].flags & O_NONBLOCK))
    return 0;
  if ((cur = fcntl(other, F_GETFL)) < 0 || fcntl(other, F_SETFL, cur & ~O_NONBLOCK) != 0)
    return 0;
  now = fcntl(fd, F_GETFL);
  fcntl(other, F_SETFL, cur);
  return now >= 0 && !(now & O_NONBLOCK);
}

typedef struct stream { int fd; } stream;   /* fd: -1 once let go */

static stream *checkstream(lua_State *L) {
  stream *s = luaL_checkudata(L, 1, STD_MT);
  if (s->fd < 0) luaL_error(L, "market.sys: stream is closed");
  return s;
}

/* Whether fd is one of the kernel's anonymous objects (epoll, eventfd,
** signalfd, timerfd, ...): never a stream.  In a program embedding market
** (the `market` interpreter keeps their numbers: main.c), standard input
** or output closed when the program started gives its number to the next
** open: the event loop's own, whose eventfd took any 8 bytes written to it
** as a wake-up count.  Its kind goes to name (what readlink says). */
static int std_anon(int fd, char *name, size_t size) {
  char path[32];
  ssize_t n;
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  n = readlink(path, name, size - 1);
  if (n < 0) return 0;
  name[n] = '\0';
  return strncmp(name, "anon_inode:", 11) == 0;
}

/* sys.std_take(fd) -> stream | nil, msg */
static int l_std_take(lua_State *L) {
  static int registered;
  char kind[64];
  lua_Integer fd = luaL_checkinteger(L, 1);
  stream *s;
  int flags;
  luaL_argcheck(L, fd == 0 || fd == 1, 1, "0 (standard input) or 1 (standard output)");
  if (stdfds[fd].held) {
    lua_pushnil(L);
    lua_pushstring(L, "held by another stdio driver");
    return 2;
  }
  if ((flags = fcntl((int)fd, F_GETFL)) < 0) return fail(L, errno);
  if (flags & O_PATH) {        /* `market` kept a closed one's number (main.c) */
    lua_pushnil(L);
    lua_pushfstring(L, "standard %s was closed when the program started",
                    fd == 0 ? "input" : "output");
    return 2;
  }
  if (std_anon((int)fd, kind, sizeof kind)) {
    lua_pushnil(L);
    lua_pushfstring(L, "descriptor %d is %s, not standard %s: it was closed when the program "
                    "started", (int)fd, kind, fd == 0 ? "input" : "output");
    return 2;
  }
  s = lua_newuserdatauv(L, sizeof *s, 0);
  s->fd = -1;
  luaL_setmetatable(L, STD_MT);
  if (!registered) {
    registered = atexit(std_at_exit) == 0;
    mk_ground_on_hard_exit(std_at_exit);   /* fcntl only: async-signal-safe */
  }
  /* What the program printed through C's stdio before comes first. */
  if (fd == 1) fflush(stdout);
  if (std_shares((int)fd, flags)) {
    flags = stdfds[1 - fd].flags;     /* as the open file was found */
    stdfds[fd].shared = stdfds[1 - fd].shared = 1;
  }
  if (fcntl((int)fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    stdfds[fd].shared = stdfds[1 - fd].shared = 0;
    return fail(L, errno);
  }
  stdfds[fd].held = 1;
  stdfds[fd].flags = flags;
  s->fd = (int)fd;
  return 1;
}

static int t_fd(lua_State *L) {
  lua_pushinteger(L, checkstream(L)->fd);
  return 1;
}

static int t_read(lua_State *L) {
  stream *s = checkstream(L);
  return readfd(L, s->fd, 0, luaL_optinteger(L, 2, READ_MAX));
}

static int t_write(lua_State *L) {
  stream *s = checkstream(L);
  return writefd(L, s->fd, 0);
}

/* stream:close([finish]): let the descriptor go, its flags as they were.
** With finish, standard output also ends: /dev/null takes the place of
** the descriptor, so the reader sees the end of the stream once nobody
** else holds it, and the number 1 is not handed to the next socket
** opened (where print() would then write). */
static int t_close(lua_State *L) {
  stream *s = luaL_checkudata(L, 1, STD_MT);
  int fd = s->fd, null;
  if (fd < 0) return 0;
  s->fd = -1;
  std_let_go(fd);
  if (lua_toboolean(L, 2) && (null = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0) {
    mk_ground_fd_closed(fd);      /* the number names another file from now on */
    if (null != fd) {
      dup2(null, fd);
      close(null);
    }
  }
  return 0;
}

/* ---- name resolution ---------------------------------------------------- */

/* Shared by the resolving thread and the Lua request; freed by the last of
** the two to let go. */
typedef struct resolve_job {
  pthread_mutex_t mu;
  int refs;
  int wfd;                   /* the thread's end of the pipe */
  int socktype;
  int rc, syserr;            /* getaddrinfo's result */
  int done;
  int delay_ms;
  struct addrinfo *res;
  char *host, *service;
} resolve_job;

typedef struct req { resolve_job *job; int rfd; } req;

static void job_release(resolve_job *j) {
  int last;
  pthread_mutex_lock(&j->mu);
  last = --j->refs == 0;
  pthread_mutex_unlock(&j->mu);
  if (!last) return;
  if (j->res) freeaddrinfo(j->res);
  pthread_mutex_destroy(&j->mu);
  free(j->host);
  free(j->service);
  free(j);
}

/* For tests: each resolution first sleeps this long (sys.set_resolve_delay),
** standing in for a slow DNS server. */
static int resolve_delay_ms;

static void *resolve_thread(void *arg) {
  resolve_job *j = arg;
  struct addrinfo hints, *res = NULL;
  int rc;
  ssize_t w;
  if (j->delay_ms > 0) {
    struct timespec ts = { j->delay_ms / 1000, (long)(j->delay_ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = j->socktype;
  hints.ai_flags = AI_ADDRCONFIG;
  rc = getaddrinfo(j->host, j->service, &hints, &res);
  pthread_mutex_lock(&j->mu);
  j->rc = rc;
  j->syserr = errno;
  j->res = rc == 0 ? res : NULL;
  j->done = 1;
  /* Under the lock: the reading end is open while the request holds on. */
  if (j->refs == 2) do { w = write(j->wfd, "!", 1); } while (w < 0 && errno == EINTR);
  pthread_mutex_unlock(&j->mu);
  close(j->wfd);
  job_release(j);
  return NULL;
}

/* host as a numeric address (no lookup): 0 and *res, or nonzero. */
static int numeric_host(const char *host, const char *service, int socktype,
                        struct addrinfo **res) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = socktype;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  return getaddrinfo(host, service, &hints, res);
}

int mkd_resolve_start(const char *host, int port, int socktype,
                      struct addrinfo **numeric, mkd_resolve_job **jobp, int *rfd,
                      const char **errp) {
  char service[16];
  struct addrinfo *res = NULL;
  int fds[2], err;
  resolve_job *j;
  pthread_t th;
  pthread_attr_t attr;
  sigset_t all, old;
  if (port < 0 || port > 65535) { *errp = BADPORT; return -1; }
  snprintf(service, sizeof service, "%d", port);
  if (numeric_host(host, service, socktype, &res) == 0) {
    *numeric = res;                              /* numeric: no need to wait */
    return 0;
  }
  if (*host == '\0') { *errp = "empty host name"; return -1; }
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) { *errp = strerror(errno); return -1; }
  j = calloc(1, sizeof *j);
  if (j == NULL || (j->host = strdup(host)) == NULL || (j->service = strdup(service)) == NULL) {
    if (j) { free(j->host); free(j); }
    close(fds[0]); close(fds[1]);
    *errp = strerror(ENOMEM);
    return -1;
  }
  pthread_mutex_init(&j->mu, NULL);
  j->refs = 2;
  j->wfd = fds[1];
  j->socktype = socktype;
  j->delay_ms = resolve_delay_ms;
  /* The thread takes no signals: they stay with the loop's thread. */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  err = pthread_create(&th, &attr, resolve_thread, j);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0) {
    close(fds[0]);
    close(fds[1]);
    j->refs = 1;
    job_release(j);
    *errp = strerror(err);
    return -1;
  }
  *jobp = j;
  *rfd = fds[0];
  return 1;
}

int mkd_resolve_poll(mkd_resolve_job *j, const struct addrinfo **res, const char **errp,
                     char *buf, size_t size) {
  int done;
  pthread_mutex_lock(&j->mu);
  done = j->done;
  pthread_mutex_unlock(&j->mu);
  if (!done) return 0;
  *res = NULL;
  if (j->rc != 0) {
    *errp = buf;
    snprintf(buf, size, "%s", gai_message(j->rc, j->syserr));
    buf[0] = (char)tolower((unsigned char)buf[0]);
    return 1;
  }
  *res = j->res;
  return 1;
}

void mkd_resolve_release(mkd_resolve_job *j) { job_release(j); }

static int l_resolve(lua_State *L) {
  size_t len;
  const char *host = luaL_checklstring(L, 1, &len);
  lua_Integer port = luaL_checkinteger(L, 2);
  const char *kind = luaL_optstring(L, 3, "tcp");
  int socktype = strcmp(kind, "udp") == 0 ? SOCK_DGRAM : SOCK_STREAM, rc, rfd;
  struct addrinfo *res = NULL;
  resolve_job *j = NULL;
  const char *err = NULL;
  req *r;
  if (badport(L, port)) return 2;
  /* The resolver reads a C string: "127.0.0.1\0x" would be 127.0.0.1. */
  if (strlen(host) != len) { lua_pushnil(L); lua_pushliteral(L, "host name holds a NUL byte"); return 2; }
  if (lua_toboolean(L, 4)) {          /* numeric only: a name starts no lookup */
    char service[16];
    snprintf(service, sizeof service, "%d", (int)port);
    if (numeric_host(host, service, socktype, &res) != 0) { lua_pushboolean(L, 0); return 1; }
    pushaddrs(L, res);
    freeaddrinfo(res);
    return 1;
  }
  /* The request userdata first: allocating it cannot then fail with a
  ** thread already running. */
  r = lua_newuserdatauv(L, sizeof *r, 0);
  r->job = NULL;
  r->rfd = -1;
  luaL_setmetatable(L, REQ_MT);
  rc = mkd_resolve_start(host, (int)port, socktype, &res, &j, &rfd, &err);
  if (rc < 0) {
    lua_pushnil(L);
    pushmsg(L, err);
    return 2;
  }
  if (rc == 0) {
    pushaddrs(L, res);
    freeaddrinfo(res);
    return 1;
  }
  r->job = j;
  r->rfd = rfd;
  return 1;
}

static req *checkreq(lua_State *L) { return luaL_checkudata(L, 1, REQ_MT); }

static int r_fd(lua_State *L) {
  req *r = checkreq(L);
  if (r->rfd < 0) return 0;
  lua_pushinteger(L, r->rfd);
  return 1;
}

/* -> addrs | nil, msg | false (not done yet) */
static int r_result(lua_State *L) {
  req *r = checkreq(L);
  resolve_job *j = r->job;
  int done;
  if (j == NULL) { lua_pushnil(L); lua_pushliteral(L, "resolution abandoned"); return 2; }
  pthread_mutex_lock(&j->mu);
  done = j->done;
  pthread_mutex_unlock(&j->mu);
  if (!done) { lua_pushboolean(L, 0); return 1; }
  if (j->rc != 0) {
    lua_pushnil(L);
    pushmsg(L, gai_message(j->rc, j->syserr));
    return 2;
  }
  pushaddrs(L, j->res);
  if (lua_rawlen(L, -1) == 0) { lua_pop(L, 1); lua_pushnil(L); lua_pushliteral(L, "no address"); return 2; }
  return 1;
}

static int r_close(lua_State *L) {
  req *r = checkreq(L);
  if (r->job) { resolve_job *j = r->job; r->job = NULL; job_release(j); }
  /* After the release: the thread writes no more. */
  if (r->rfd >= 0) { mkd_close_watched(r->rfd); r->rfd = -1; }
  return 0;
}

static int l_set_resolve_delay(lua_State *L) {
  resolve_delay_ms = (int)luaL_checkinteger(L, 1);
  return 0;
}

/* sys.holds_wild(v) -> whether the wildcard occurs in the term v, at any
** depth: the term's own `ground` flag (term.h), for the tcp and udp
** drivers, to whom an address so is an observer's pattern and gets no
** socket of its own.  A value that is no term holds none. */
static int l_holds_wild(lua_State *L) {
  const char *err;
  mk_term *t = mkl_testbox(L, 1);
  if (t != NULL) {
    lua_pushboolean(L, !t->ground);
    return 1;
  }
  t = mkl_toterm(L, 1, &err);
  lua_pushboolean(L, t != NULL && !t->ground);
  mk_unref(t);
  return 1;
}

/* For tests: lose the spare descriptor, as when another thread takes its
** slot during a refusal. */
static int l_lose_spare(lua_State *L) {
  (void)L;
  if (spare_fd >= 0) { close(spare_fd); spare_fd = -1; }
  return 0;
}

/* ---- the module --------------------------------------------------------- */

/* Push the metatable `name`, made the first time: its __index holds the
** methods, which share the scratch buffer below it as their upvalue, and
** its __gc and __close are gc (close_at_end calls __close). */
static void newclass(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc) {
  if (luaL_newmetatable(L, name)) {
    lua_newtable(L);
    lua_pushvalue(L, -3);
    luaL_setfuncs(L, methods, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__close");
  }
}

int luaopen_market_sys(lua_State *L) {
  static const luaL_Reg sock_methods[] = {
    {"fd", s_fd}, {"close", s_close}, {"read", s_read}, {"write", s_write},
    {"so_error", s_so_error}, {"shutdown", s_shutdown}, {"accept", s_accept},
    {"local_port", s_local_port}, {"peer", s_peer}, {"recvfrom", s_recvfrom},
    {"sendto", s_sendto}, {NULL, NULL}};
  static const luaL_Reg stream_methods[] = {
    {"fd", t_fd}, {"read", t_read}, {"write", t_write}, {"close", t_close}, {NULL, NULL}};
  static const luaL_Reg req_methods[] = {
    {"fd", r_fd}, {"result", r_result}, {"close", r_close}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {
    {"resolve", l_resolve}, {"tcp_listen", l_tcp_listen}, {"tcp_connect", l_tcp_connect},
    {"unix_listen", l_unix_listen},
    {"udp_bind", l_udp_bind}, {"close_at_end", l_close_at_end}, {"owner", l_owner}, {"at_return", l_at_return}, {"send", l_send},
    {"fd_read", l_fd_read}, {"std_take", l_std_take}, {"holds_wild", l_holds_wild},
    {"set_resolve_delay", l_set_resolve_delay}, {"lose_spare", l_lose_spare}, {NULL, NULL}};
  lua_newuserdatauv(L, READ_MAX > DGRAM_MAX ? READ_MAX : DGRAM_MAX, 0);   /* scratch */
  newclass(L, SOCK_MT, sock_methods, s_close);
  lua_pushcfunction(L, s_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  newclass(L, STD_MT, stream_methods, t_close);
  lua_pop(L, 1);
  if (luaL_newmetatable(L, REQ_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, req_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, r_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, r_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, funcs, 1);
  lua_remove(L, -2);
  mkd_open_count(L);
  mkd_open_tcpconn(L);
  mkd_open_tls(L);
  mkd_open_cluster(L);
  return 1;
}
