/*
** mkd.h: what the drivers' C halves share (drivers/ only, not installed).
**
** lsys.c (market.sys) owns sockets as Lua userdata and resolves names on
** threads; tcpconn.c (the TCP connection manager, a native process) uses
** both from C; count.c's counter sets serve tcpconn.c and lcluster.c.
*/
#ifndef MKD_H
#define MKD_H

#include <netdb.h>
#include <sys/types.h>
#include <sys/un.h>

#include <lua.h>

/* ---- lsys.c ------------------------------------------------------------- */

/* strerror(err) as the drivers report it: first letter in lower case
** ("connection refused").  Returns buf (at least 128 bytes). */
const char *mkd_strerror(int err, char *buf, size_t size);

/* Close fd, which a ground event may watch (market:readable / writable):
** every ground stops its watches on it first (mk_ground_fd_closed), so
** that a subscriber sharing such a watch sees it fail, and a descriptor
** that reuses the number starts a watch of its own instead of joining one
** the kernel has forgotten.  Every descriptor the drivers watch is closed
** through this. */
void mkd_close_watched(int fd);

/* The descriptor of the market.sys socket at idx (a Lua error when idx is
** not an open one).  mkd_sock_take also makes the userdata forget it: the
** caller owns the descriptor from then on. */
int mkd_sockfd(lua_State *L, int idx);
int mkd_sock_take(lua_State *L, int idx);

/* Room for a peer's host text (mkd_accept): an IPv6 address's, or a Unix
** socket's path (sun_path: 108 bytes on Linux), and its NUL. */
#define MKD_HOST_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) + 1)

/* Accept on listening socket fd: a non-blocking, close-on-exec socket with
** TCP_NODELAY, and the peer's numeric host and port (IPv4-mapped addresses
** as IPv4; on a Unix socket, the peer's path, "" when it has none, as a
** client's socket mostly has not, and port 0).  Returns the descriptor; -1
** with errno = EAGAIN when there is nothing to accept now (also for a
** connection aborted before it was taken); -1 with errno otherwise. */
int mkd_accept(int fd, char *host, size_t hostsize, int *port);

/* When accept failed for want of descriptors (EMFILE, ENFILE): accept one
** waiting connection on a spare descriptor kept for this, and close it at
** once, so that the client is told no.  Returns 0 and its host and port;
** -1 with errno when nothing was refused (no spare: EMFILE; nothing waits:
** EAGAIN).  The spare is opened by the first sys.tcp_listen, and opened
** again by mkd_accept and mkd_accept_refuse whenever it was lost. */
int mkd_accept_refuse(int fd, char *host, size_t hostsize, int *port);

/* A non-blocking TCP connection to sa: the descriptor and *inprogress (0:
** connected at once, 1: completes later: watch for writable, then
** mkd_so_error).  -1 with errno on failure.  sa may be a Unix socket's
** address (mkd_unix_addr): -1 with EAGAIN then says its listen queue is
** full. */
int mkd_tcp_connect(const struct sockaddr *sa, socklen_t len, int *inprogress);

/* The address of the Unix socket at path s[0..n): 0, *sa and *len; -1
** and a message in why[0..size) when s cannot name one (empty, holding a
** NUL byte, or longer than sun_path takes: 107 bytes on Linux). */
int mkd_unix_addr(const char *s, size_t n, struct sockaddr_un *sa, socklen_t *len, char *why,
                  size_t size);
/* SO_ERROR of fd: 0 when connected, else the error number. */
int mkd_so_error(int fd);

/*
** Name resolution on a thread (the one behind sys.resolve).  Start: a
** numeric host resolves at once (returns 0 and *numeric, which the caller
** frees with freeaddrinfo); a name starts a thread (returns 1, *job and
** *rfd, a pipe that becomes readable when the answer is there); -1 and
** *err (static text) on failure.  Poll: 0 while not done; 1 when done,
** with *res (borrowed from the job, only AF_INET/AF_INET6 entries matter)
** or *res == NULL and *err (a message, lower-case first letter, in buf).
** Release: abandon the job (the thread cleans up after itself); close
** *rfd after releasing.
*/
typedef struct resolve_job mkd_resolve_job;
int mkd_resolve_start(const char *host, int port, int socktype,
                      struct addrinfo **numeric, mkd_resolve_job **job, int *rfd,
                      const char **err);
int mkd_resolve_poll(mkd_resolve_job *j, const struct addrinfo **res, const char **err,
                     char *buf, size_t size);
void mkd_resolve_release(mkd_resolve_job *j);

/* ---- count.c ------------------------------------------------------------ */

/* A set of named counters: a driver's C code counts into v[] without
** entering Lua, and Lua holds the set as a userdata read and set like a
** table's fields (tcp.stats, cluster.stats): a name not in the set reads
** as nil and cannot be set.  Counted references: the userdata holds the
** first; a C holder takes one (refs++) and lets go with
** mkd_count_release; the last to let go frees the set. */
typedef struct mkd_count {
  unsigned refs;
  const char *what;                /* the Lua name, for messages: "tcp.stats" */
  const char *const *names;        /* the counters', NULL-terminated, static */
  lua_Integer v[];                 /* one per name, from 0 */
} mkd_count;

/* Push a new set of the counters names (static), all 0, and return it. */
mkd_count *mkd_newcount(lua_State *L, const char *what, const char *const *names);
/* The set at idx made with names (the same list): a Lua error
** (mkd_checkcount) or NULL (mkd_testcount) when idx holds no such set, so
** that C never counts past a set's end.  mkd_checkcount with names NULL
** takes any set. */
mkd_count *mkd_checkcount(lua_State *L, int idx, const char *const *names);
mkd_count *mkd_testcount(lua_State *L, int idx, const char *const *names);
void mkd_count_release(mkd_count *n);  /* NULL accepted */
/* The sets' metatable, made once per Lua state (before any mkd_newcount). */
void mkd_open_count(lua_State *L);

/* ---- tcpconn.c ---------------------------------------------------------- */

/* Adds tcp_accept, tcp_manage and tcp_stats to the market.sys table at
** the top of L's stack (see tcpconn.c). */
void mkd_open_tcpconn(lua_State *L);

/* ---- tls.c --------------------------------------------------------------- */

/* A TLS session on a connected socket, for a manager of tcpconn.c
** (docs/tcp.md, "TLS"): OpenSSL's, loaded at the first.  Owned by the
** manager (mkd_tls_free); the socket stays the manager's. */
typedef struct mkd_tls mkd_tls;

/* Results besides bytes (> 0) and the end of stream (0). */
enum { MKD_TLS_WANT_READ = -1, MKD_TLS_WANT_WRITE = -2, MKD_TLS_ERROR = -3 };

struct mk_term;
/* Whether t is a TLS configuration, a tcp-tls record (tcp.tls). */
int mkd_tls_is_config(const struct mk_term *t);
/* The session of configuration `config` on fd, a server's or a client's
** (host: the peer's name or address, checked against its certificate
** and named in SNI unless the configuration names another); NULL and why
** (words for a reason: "tls: ...") on failure. */
mkd_tls *mkd_tls_new(const struct mk_term *config, int fd, int server, const char *host,
                     char *why, size_t size);
void mkd_tls_free(mkd_tls *t);      /* NULL accepted */
/* A step of the handshake: 1 when it is done, MKD_TLS_WANT_* or
** MKD_TLS_ERROR (why). */
int mkd_tls_handshake(mkd_tls *t, char *why, size_t size);
/* Bytes read or written, 0 at the peer's end of stream (read), or
** MKD_TLS_WANT_* or MKD_TLS_ERROR (why). */
ssize_t mkd_tls_read(mkd_tls *t, char *buf, size_t n, char *why, size_t size);
ssize_t mkd_tls_write(mkd_tls *t, const char *buf, size_t n, char *why, size_t size);
/* Bytes read from the socket and decrypted but not yet taken. */
size_t mkd_tls_pending(const mkd_tls *t);
/* Send close_notify, if the socket takes it (writing then shuts down). */
void mkd_tls_close_notify(mkd_tls *t);
/* "TLSv1.3", ... */
const char *mkd_tls_version(const mkd_tls *t);
/* The certificate the peer gave in the handshake (a client's, when a
** server asks for one: a configuration with `ca`), as a record
** tcp-certificate(subject, issuer, names, serial, fingerprint,
** not_before, not_after, pem) (docs/tcp.md, "TLS"); false when it gave
** none; NULL when out of memory.  The caller owns the term. */
struct mk_term *mkd_tls_peer(mkd_tls *t);
/* Adds tls_check and tls_serial to the market.sys table at the top of L's stack. */
void mkd_open_tls(lua_State *L);

/* ---- lcluster.c --------------------------------------------------------- */

/* Adds nats_connect and host_pid to the market.sys table at the top of L's
** stack: the NATS connection of the cluster driver (see lcluster.c). */
void mkd_open_cluster(lua_State *L);

/* Prepare OpenSSL, through the library handle lib that brings it (libssl,
** libnats): its memory counted with the pool's, and no cleanup at exit,
** where other threads may still be in it (tls.c says more).  Call it
** before anything uses OpenSSL. */
void mkd_openssl_prepare(void *lib);
/* Keep market's code in memory until the process ends (lsys.c says why):
** before handing out code that may be called after the Lua state that
** loaded market closes. */
void mkd_pin_self(void);

#endif
