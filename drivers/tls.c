/*
** tls.c: TLS for the TCP driver's connections (docs/tcp.md, "TLS"), on
** OpenSSL (Debian's libssl3; docs/packaging.md says why).
**
** A connection speaks TLS when its settings carry a TLS configuration: a
** tcp-tls(cert, key, ca, verify, server_name, serial, pin, sni) record that
** tcp.tls() made (drivers/tcp.lua).  The record is plain data (paths,
** flags), so it travels in tcp-options like any setting; the OpenSSL
** context it stands for is built once, by tcp.tls(), from the files as
** they are then, and kept with the record for as long as the record
** lives (configurations, below): no file is read for a connection, and a
** certificate renewed on disk is taken by the next tcp.tls() only.  Each
** session holds its context's reference itself (SSL_new).
**
** The manager (tcpconn.c) owns the socket and the watches; here are only
** the session's steps, each telling what the socket must do next.
**
** libssl is opened at the first use, not linked: it and libcrypto cost
** their relocations at every start (docs/performance.md, bench-startup),
** as libnats did before it was opened so (lcluster.c).  TLS_API lists
** every OpenSSL function this file calls, each called through `ssl`.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <lua.h>
#include <lauxlib.h>

#include "mkl.h"
#include "mkd.h"
#include "pool.h"      /* mk_pool_lib_malloc */

#define TLS_API(X) \
  X(TLS_method) X(SSL_CTX_new) X(SSL_CTX_free) X(SSL_CTX_ctrl) X(SSL_CTX_set_options) \
  X(SSL_set_verify) X(SSL_CTX_load_verify_locations) \
  X(SSL_CTX_use_certificate_chain_file) X(SSL_CTX_use_PrivateKey_file) \
  X(SSL_CTX_check_private_key) X(SSL_CTX_set_default_passwd_cb) \
  X(SSL_CTX_set_default_passwd_cb_userdata) X(SSL_CTX_set_num_tickets) X(SSL_new) X(SSL_free) \
  X(SSL_set_fd) X(SSL_set_connect_state) X(SSL_set_accept_state) X(SSL_do_handshake) \
  X(SSL_read) X(SSL_write) X(SSL_shutdown) X(SSL_get_error) X(SSL_pending) X(SSL_ctrl) \
  X(SSL_set1_host) X(SSL_get0_param) X(SSL_get_verify_result) X(SSL_get_verify_mode) \
  X(SSL_get_version) \
  X(ERR_get_error) X(ERR_peek_error) X(ERR_clear_error) X(ERR_error_string_n) \
  X(ERR_reason_error_string) \
  X(X509_verify_cert_error_string) X(X509_VERIFY_PARAM_set1_ip_asc) \
  X(SSL_get1_peer_certificate) X(X509_free) X(X509_get_subject_name) X(X509_get_issuer_name) \
  X(X509_NAME_print_ex) X(X509_get_ext_d2i) X(X509_get0_serialNumber) X(X509_digest) \
  X(X509_get0_notBefore) X(X509_get0_notAfter) X(ASN1_TIME_to_tm) X(ASN1_INTEGER_to_BN) \
  X(ASN1_STRING_get0_data) X(ASN1_STRING_length) X(BN_bn2hex) X(BN_free) X(CRYPTO_free) \
  X(EVP_sha256) X(GENERAL_NAMES_free) X(OPENSSL_sk_num) X(OPENSSL_sk_value) \
  X(BIO_new) X(BIO_s_mem) X(BIO_free) X(BIO_ctrl) X(PEM_write_bio_X509) \
  X(SSL_CTX_callback_ctrl) X(SSL_get_servername) X(SSL_set_SSL_CTX) X(SSL_set_ex_data) \
  X(SSL_get_ex_data) X(SSL_get_SSL_CTX) X(SSL_CTX_get_cert_store) X(SSL_CTX_set1_cert_store) \
  X(X509_STORE_new) X(X509_STORE_free) X(X509_STORE_set_default_paths) X(X509_STORE_load_path) \
  X(X509_get_default_cert_dir) X(X509_get_default_cert_file) X(X509_get_default_cert_dir_env) X(X509_get_default_cert_file_env)

#define TLS_FIELD(f) __typeof__(&f) f;
static struct { TLS_API(TLS_FIELD) } ssl;
#undef TLS_FIELD

#define TLS_STR_(x) #x
#define TLS_STR(x) TLS_STR_(x)
static const char *const ssl_sonames[] = {
  "libssl.so." TLS_STR(OPENSSL_VERSION_MAJOR), "libssl.so", NULL };

static pthread_once_t ssl_once = PTHREAD_ONCE_INIT;
static const char *ssl_failed;
static char ssl_why[256];

static void ssl_load(void) {
  void *lib = mkl_dlopen(ssl_sonames, "OpenSSL", "libssl3", ssl_why, sizeof ssl_why);
  if (lib == NULL) { ssl_failed = ssl_why; return; }
  mkd_openssl_prepare(lib);
  /* (dlsym on libssl's handle finds libcrypto's functions too: it is
  ** among the handle's dependencies.) */
#define TLS_LOAD(f) \
  if (!mkl_dlsym(lib, #f, (void **)&ssl.f, "OpenSSL", ssl_sonames[0], ssl_why, sizeof ssl_why)) { \
    ssl_failed = ssl_why; \
    return; \
  }
  TLS_API(TLS_LOAD)
#undef TLS_LOAD
}

/*
** Whoever opens a library that brings libcrypto (libssl here, libnats in
** lcluster.c) prepares OpenSSL before anything else can use it: lib is
** the handle (dlsym searches its dependencies).
**
** Its memory is counted with the pool's (runtime/pool.h,
** mk_pool_lib_malloc): an idle TLS connection holds some 16 KB of
** OpenSSL's, which the memory limit did not see, so that ten thousand of
** them could pass a cgroup's limit while the count stayed under its own.
** OpenSSL takes the functions only before its first allocation.
**
** And it is asked for no cleanup at exit (an atexit handler its first
** initialization registers), where threads may still be inside it:
** libnats's connect and reader threads, in a handshake or a read, when a
** program exits with a cluster connection still being made (a segfault,
** status 139, one such exit in four).  Nothing is gained by the cleanup
** at exit.
**
** If OpenSSL was in use before (a host that uses it too), neither takes:
** its memory is then not counted, and its handler stays.
*/
static void *ossl_malloc(size_t n, const char *file, int line) {
  (void)file;
  (void)line;
  return mk_pool_lib_malloc(n);
}

static void *ossl_realloc(void *p, size_t n, const char *file, int line) {
  (void)file;
  (void)line;
  return mk_pool_lib_realloc(p, n);
}

static void ossl_free(void *p, const char *file, int line) {
  (void)file;
  (void)line;
  mk_pool_lib_free(p);
}

void mkd_openssl_prepare(void *lib) {
  int (*set_mem)(CRYPTO_malloc_fn, CRYPTO_realloc_fn, CRYPTO_free_fn);
  int (*init)(uint64_t, const void *);
  *(void **)&set_mem = dlsym(lib, "CRYPTO_set_mem_functions");
  /* (OpenSSL calls them until the process ends) */
  if (set_mem != NULL && set_mem(ossl_malloc, ossl_realloc, ossl_free)) mkd_pin_self();
  *(void **)&init = dlsym(lib, "OPENSSL_init_crypto");
  if (init != NULL) (void)init(OPENSSL_INIT_NO_ATEXIT, NULL);
}

static const char *ssl_open(void) {
  pthread_once(&ssl_once, ssl_load);
  return ssl_failed;
}

/* ---- configurations --------------------------------------------------------- */

/* A configuration, read from its record.  Strings point into the term. */
typedef struct tls_conf {
  const char *cert, *key, *ca, *server_name;   /* NULL: not given */
  int verify;
  int64_t serial;
  mk_term *pin;      /* the peer certificates' SHA-256 fingerprints taken (strings of
                     ** 64 lower-case hexadecimal digits), a sequence; NULL: none */
  mk_term *sni;      /* a server's other certificates by the name a client asks
                     ** for: a sequence of [name, configuration]; NULL: none */
} tls_conf;

enum { F_CERT, F_KEY, F_CA, F_VERIFY, F_NAME, F_SERIAL, F_PIN, F_SNI, NFIELDS };

/* A string field, or false: NULL.  -1: neither (or a NUL inside). */
static int str_field(const mk_term *t, const char **s) {
  *s = NULL;
  if (t->kind == MK_FALSE) return 0;
  if (t->kind != MK_STR || t->n == 0 || memchr(mk_strdata(t), '\0', t->n) != NULL) return -1;
  *s = mk_strdata(t);
  return 0;
}

int mkd_tls_is_config(const mk_term *t) {
  static const char label[] = "tcp-tls";
  return t != NULL && t->kind == MK_REC && t->n == NFIELDS &&
         t->v.rt->labellen == sizeof label - 1 && memcmp(t->v.rt->label, label, sizeof label) == 0;
}

static const char *read_conf(const mk_term *t, tls_conf *cf) {
  mk_term *const *f;
  if (!mkd_tls_is_config(t)) return "not a TLS configuration (tcp.tls makes one)";
  f = mk_items(t);
  if (str_field(f[F_CERT], &cf->cert) || str_field(f[F_KEY], &cf->key) ||
      str_field(f[F_CA], &cf->ca) || str_field(f[F_NAME], &cf->server_name))
    return "a TLS configuration's paths and name must be strings or false";
  if (f[F_VERIFY]->kind != MK_TRUE && f[F_VERIFY]->kind != MK_FALSE)
    return "a TLS configuration's verify must be a boolean";
  if (f[F_SERIAL]->kind != MK_INT) return "a TLS configuration's serial must be an integer";
  cf->pin = NULL;
  if (f[F_PIN]->kind == MK_SEQ) {
    uint32_t i;
    for (i = 0; i < f[F_PIN]->n; i++) {
      const mk_term *fp = mk_items(f[F_PIN])[i];
      if (fp->kind != MK_STR || fp->n != 64) return "a TLS configuration's pin must be fingerprints";
    }
    cf->pin = f[F_PIN];
  } else if (f[F_PIN]->kind != MK_FALSE) {
    return "a TLS configuration's pin must be a sequence of fingerprints or false";
  }
  cf->sni = NULL;
  if (f[F_SNI]->kind == MK_SEQ) {
    uint32_t i;
    for (i = 0; i < f[F_SNI]->n; i++) {
      const mk_term *kv = mk_items(f[F_SNI])[i];
      if (kv->kind != MK_SEQ || kv->n != 2 || mk_items(kv)[0]->kind != MK_STR ||
          !mkd_tls_is_config(mk_items(kv)[1]))
        return "a TLS configuration's sni must be pairs of a name and a configuration";
    }
    cf->sni = f[F_SNI];
  } else if (f[F_SNI]->kind != MK_FALSE) {
    return "a TLS configuration's sni must be a sequence of pairs or false";
  }
  cf->verify = f[F_VERIFY]->kind == MK_TRUE;
  cf->serial = f[F_SERIAL]->v.i;
  if (cf->key != NULL && cf->cert == NULL) return "a key without its certificate (cert)";
  return NULL;
}

/* OpenSSL's reason for the last failure, after `what`, into why. */
static void ssl_reason(const char *what, char *why, size_t size) {
  unsigned long e = ssl.ERR_get_error();      /* the first queued: the cause */
  const char *r = e ? ssl.ERR_reason_error_string(e) : NULL;
  if (r != NULL) snprintf(why, size, "%s: %s", what, r);
  else if (e) {
    char buf[200];
    ssl.ERR_error_string_n(e, buf, sizeof buf);
    snprintf(why, size, "%s: %s", what, buf);
  } else {
    snprintf(why, size, "%s", what);
  }
}

/* A file the configuration names must be there and readable: errno's
** words say so more plainly than OpenSSL's ("system lib").  0: a file;
** 1: a directory (only where dir_ok); -1 and why: neither. */
static int readable_path(const char *what, const char *path, int dir_ok, char *why, size_t size) {
  struct stat st;
  char buf[128];
  if (stat(path, &st) != 0 || access(path, R_OK) != 0) {
    snprintf(why, size, "tls: cannot read the %s %s: %s", what, path,
             mkd_strerror(errno, buf, sizeof buf));
    return -1;
  }
  if (S_ISDIR(st.st_mode) && !dir_ok) {
    snprintf(why, size, "tls: the %s %s is a directory", what, path);
    return -1;
  }
  return S_ISDIR(st.st_mode);
}

/* A session (mkd.h): owned by its manager. */
struct mkd_tls {
  SSL *s;
  mk_term *pin;      /* (tls_conf's, a reference of the session's own) */
  mk_term *sni;      /* (the same) */
};

static SSL_CTX *context(const mk_term *t, const tls_conf *cf, char *why, size_t size);

/* Whether the name a client asked for (SNI) is `pattern`: the same name,
** or under a wildcard's domain ("*.example.com": one label more). */
static int sni_matches(const char *name, const mk_term *pattern) {
  const char *p = mk_strdata(pattern), *dot;
  if (strcasecmp(name, p) == 0) return 1;
  return p[0] == '*' && p[1] == '.' && (dot = strchr(name, '.')) != NULL && dot != name &&
         strcasecmp(dot + 1, p + 2) == 0;
}

/* A server's client named a host (SNI): the session takes the context of
** the configuration given for that name (tcp.tls's sni), the first that
** matches; any other name, or none, keeps the server's own certificate. */
static int on_servername(SSL *s, int *alert, void *arg) {
  const mkd_tls *t = ssl.SSL_get_ex_data(s, 0);
  const char *name = ssl.SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
  uint32_t i;
  (void)alert;
  (void)arg;
  if (t == NULL || t->sni == NULL || name == NULL) return SSL_TLSEXT_ERR_OK;
  for (i = 0; i < t->sni->n; i++) {
    const mk_term *kv = mk_items(t->sni)[i];
    tls_conf cf;
    SSL_CTX *ctx;
    X509_STORE *trust;
    char why[256];
    if (!sni_matches(name, mk_items(kv)[0])) continue;
    if (read_conf(mk_items(kv)[1], &cf) != NULL || cf.cert == NULL ||
        (ctx = context(mk_items(kv)[1], &cf, why, sizeof why)) == NULL)
      return SSL_TLSEXT_ERR_OK;          /* (tcp.tls checked it: not met) */
    /* The certificate is the name's; the CAs that clients' certificates
    ** are verified against stay the server's, as the verify mode does
    ** (the session's own): OpenSSL would take the new context's. */
    trust = ssl.SSL_CTX_get_cert_store(ssl.SSL_get_SSL_CTX(s));
    ssl.SSL_set_SSL_CTX(s, ctx);
    ssl.SSL_ctrl(s, SSL_CTRL_SET_VERIFY_CERT_STORE, 1, trust);
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_OK;
}

/* Whether the bundle file is OpenSSL's default one and a copy of what the
** directory holds: it lies in the directory (by their real paths), and
** the directory holds certificates by the hash of their subject (names
** of eight hexadecimal digits, a dot and a number).  That is Debian's
** layout: update-ca-certificates makes /etc/ssl/certs/ca-certificates.crt
** and the hashed names in /etc/ssl/certs from one set, and OpenSSL's
** default file and directory lead there.  A bundle of one's own
** (SSL_CERT_FILE) is always read, wherever it lies. */
static int bundle_of_dir(const char *file, const char *dir) {
  char *rf = realpath(file, NULL), *rd = realpath(dir, NULL);
  char *rdef = realpath(ssl.X509_get_default_cert_file(), NULL), *slash;
  DIR *d = NULL;
  struct dirent *e;
  int found = 0;
  if (rf != NULL && rd != NULL && rdef != NULL && strcmp(rf, rdef) == 0 &&
      (slash = strrchr(rf, '/')) != NULL && (size_t)(slash - rf) == strlen(rd) &&
      memcmp(rf, rd, strlen(rd)) == 0 && (d = opendir(rd)) != NULL) {
    while (!found && (e = readdir(d)) != NULL) {
      const char *n = e->d_name;
      found = strlen(n) >= 10 && strspn(n, "0123456789abcdef") == 8 && n[8] == '.' &&
              strspn(n + 9, "0123456789") == strlen(n + 9);
    }
    closedir(d);
  }
  free(rf);
  free(rd);
  free(rdef);
  return found;
}

/* The system's CA certificates (OpenSSL's default file and directory, or
** SSL_CERT_FILE's and SSL_CERT_DIR's): one store, made at the first use,
** that every context verifying against them shares (each holds a
** reference; this one is kept to the end).  Read into each context, the
** bundle file (some 140 certificates) cost the loop 25 to 40 ms at every
** tcp.tls() and at the first connection, 80 to 250 ms on a busy host; now
** once.  Where the file is the default one and the hashed directory's own
** (above), the directory alone is used, and a certificate is read when a
** chain asks for its issuer, then kept: the first use costs a fraction of
** a millisecond.  NULL on failure (OpenSSL's error queued). */
static X509_STORE *system_cas(void) {
  static X509_STORE *cas;
  const char *file = getenv(ssl.X509_get_default_cert_file_env());
  const char *dir = getenv(ssl.X509_get_default_cert_dir_env());
  X509_STORE *s;
  int ok;
  if (cas != NULL) return cas;
  if (file == NULL) file = ssl.X509_get_default_cert_file();
  if (dir == NULL) dir = ssl.X509_get_default_cert_dir();
  if ((s = ssl.X509_STORE_new()) == NULL) return NULL;
  if (strchr(dir, ':') == NULL && bundle_of_dir(file, dir))
    ok = ssl.X509_STORE_load_path(s, dir);
  else
    ok = ssl.X509_STORE_set_default_paths(s);
  if (ok != 1) {
    ssl.X509_STORE_free(s);
    return NULL;
  }
  return cas = s;
}

/* OpenSSL's passphrase callback: none is given.  Without one OpenSSL asks
** for it on the terminal (or stdin), and the whole VM waited there, at
** tcp.tls and again at a connection, taking the program's input.  *asked
** (the userdata, while build reads the key) notes that it was wanted. */
static int no_passphrase(char *buf, int size, int rwflag, void *asked) {
  (void)buf;
  (void)size;
  (void)rwflag;
  if (asked != NULL) *(int *)asked = 1;
  return 0;
}

/* A new context for cf, its files read now: NULL and why on failure. */
static SSL_CTX *build(const tls_conf *cf, char *why, size_t size) {
  SSL_CTX *ctx;
  char what[300];
  int asked = 0;                                    /* the key wanted a passphrase */
  const char *key = cf->key ? cf->key : cf->cert;   /* one PEM file may hold both */
  int ca_dir = 0;                                   /* ca names a hashed directory */
  if ((cf->cert && readable_path("certificate", cf->cert, 0, why, size) < 0) ||
      (key && readable_path("key", key, 0, why, size) < 0) ||
      (cf->ca && (ca_dir = readable_path("CA certificates", cf->ca, 1, why, size)) < 0))
    return NULL;
  ssl.ERR_clear_error();
  if ((ctx = ssl.SSL_CTX_new(ssl.TLS_method())) == NULL) {
    ssl_reason("tls: cannot make a context", why, size);
    return NULL;
  }
  ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL);
  /* Writes as the manager makes them (tcpconn.c, put): a partial write
  ** is a count, and a write tried again may come from another buffer
  ** holding the same bytes (the queue's copy).  The certificate chain
  ** sent is the cert file's, as it is: completed from the CA store, it
  ** cost every handshake a listing of /etc/ssl/certs (a fifth of a
  ** server's time).  An idle session gives its record buffers back
  ** (idle, a TLS connection held 33 KB more than a plain one; 16 KB so). */
  ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_MODE,
                   SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                   SSL_MODE_NO_AUTO_CHAIN | SSL_MODE_RELEASE_BUFFERS, NULL);
  /* No renegotiation (a read would have to write, a write to read); a
  ** peer's close without close_notify is an end of stream, as a TCP close
  ** is: an HTTP body has its own length, and the peers market meets
  ** mostly do not send one. */
  ssl.SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  /* No session tickets: market's clients do not resume, and each one
  ** cost a server a write after the handshake. */
  ssl.SSL_CTX_set_num_tickets(ctx, 0);
  if (cf->sni != NULL)
    ssl.SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, (void (*)(void))on_servername);
  /* (Sessions copy the callback and its userdata from the context: the
  ** userdata goes before any is made.) */
  ssl.SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
  ssl.SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
  if (cf->cert) {
    snprintf(what, sizeof what, "tls: the certificate %s", cf->cert);
    if (ssl.SSL_CTX_use_certificate_chain_file(ctx, cf->cert) != 1) goto fail;
    snprintf(what, sizeof what, "tls: the key %s", key);
    if (ssl.SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) goto fail;
    if (ssl.SSL_CTX_check_private_key(ctx) != 1) goto fail;
  }
  ssl.SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
  if (cf->ca) {
    snprintf(what, sizeof what, "tls: the CA certificates %s", cf->ca);
    if (ssl.SSL_CTX_load_verify_locations(ctx, ca_dir ? NULL : cf->ca, ca_dir ? cf->ca : NULL) != 1)
      goto fail;
  } else if (cf->verify) {
    X509_STORE *cas = system_cas();
    snprintf(what, sizeof what, "tls: the system's CA certificates");
    if (cas == NULL) goto fail;
    ssl.SSL_CTX_set1_cert_store(ctx, cas);
  }
  return ctx;
fail:
  if (asked) {
    ssl.ERR_clear_error();
    snprintf(why, size, "%s is encrypted: a key with a passphrase is not supported", what);
  } else {
    ssl_reason(what, why, size);
  }
  ssl.SSL_CTX_free(ctx);
  return NULL;
}

/*
** The configurations tcp.tls made, each with the context built from its
** files then (one reference, the configuration's).  A configuration keeps
** its context as long as its record lives: held by a Lua variable, in a
** published setting, by a listener or a manager.  Terms are counted
** references and the record here is one of them: when it is the only one
** left, nobody can hand the configuration to a connection any more, and
** its context goes (swept at the next tcp.tls, so that the contexts kept
** are those of the live configurations and of those dropped since then).
** A cache of built contexts, as before, read a configuration's files
** again once its context had been pushed out: a renewed or half-written
** certificate was taken by a configuration made before it, and a program
** with more configurations than the cache read files at connections.
**
** A record is found by its pointer (the term that travels), else as an
** equal record (one rebuilt from its fields: its serial and paths alike).
** TLS_CLIENT's (tls = true, serial 0) names no file of its own: its one
** context is built at the first use and kept.
*/
typedef struct held { mk_term *config; SSL_CTX *ctx; } held;
static held *configs;
static size_t nconfigs, configcap;
static size_t collect_at = 64;     /* (l_tls_check) */
static SSL_CTX *client_ctx;

/* The contexts of the configurations no one holds any more go. */
static void sweep(void) {
  size_t i, j = 0;
  for (i = 0; i < nconfigs; i++) {
    if (configs[i].config->refs == 1) {
      ssl.SSL_CTX_free(configs[i].ctx);
      mk_unref(configs[i].config);
    } else {
      configs[j++] = configs[i];
    }
  }
  nconfigs = j;
}

/* Whether config is one of the configurations kept (this very term). */
static int kept(const mk_term *config) {
  size_t i;
  for (i = 0; i < nconfigs; i++)
    if (configs[i].config == config) return 1;
  return 0;
}

/* Keeps ctx as the context of config (a reference taken): 0, or -1 when
** out of memory (ctx then freed). */
static int keep(mk_term *config, SSL_CTX *ctx) {
  sweep();
  if (nconfigs == configcap) {
    size_t ncap = configcap ? 2 * configcap : 8;
    held *n = realloc(configs, ncap * sizeof *n);
    if (n == NULL) { ssl.SSL_CTX_free(ctx); return -1; }
    configs = n;
    configcap = ncap;
  }
  configs[nconfigs].config = mk_ref(config);
  configs[nconfigs].ctx = ctx;
  nconfigs++;
  return 0;
}

/* The context of configuration t (read as cf): a reference the
** configuration holds (SSL_new takes its own), or NULL and why. */
static SSL_CTX *context(const mk_term *t, const tls_conf *cf, char *why, size_t size) {
  size_t i;
  if (cf->serial == 0 && cf->cert == NULL && cf->ca == NULL && cf->sni == NULL) {
    if (client_ctx == NULL) {
      tls_conf client = { NULL, NULL, NULL, NULL, 1, 0, NULL, NULL };
      client_ctx = build(&client, why, size);
    }
    return client_ctx;
  }
  for (i = 0; i < nconfigs; i++)
    if (configs[i].config == t) return configs[i].ctx;
  for (i = 0; i < nconfigs; i++)
    if (mk_items(configs[i].config)[F_SERIAL]->v.i == cf->serial && mk_equal(configs[i].config, t))
      return configs[i].ctx;
  snprintf(why, size, "tls: not a configuration that tcp.tls made in this program");
  return NULL;
}

/* ---- sessions --------------------------------------------------------------- */


/* x's SHA-256 fingerprint (of its DER) in hex: 64 lower-case digits, or
** "" when it cannot be had. */
static void fingerprint_hex(const X509 *x, char hex[2 * EVP_MAX_MD_SIZE + 1]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned n = 0, i;
  if (ssl.X509_digest(x, ssl.EVP_sha256(), md, &n) != 1) n = 0;
  for (i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
  hex[2 * n] = '\0';
}

/* A server that pins its clients' certificates without CAs to verify
** them against takes any chain: the pin is what decides (pinned). */
static int any_chain(int ok, X509_STORE_CTX *store) {
  (void)ok;
  (void)store;
  return 1;
}

/* After the handshake: the peer's certificate is one of t->pin's (1), or
** 0 and why. */
static int pinned(mkd_tls *t, char *why, size_t size) {
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  X509 *x = ssl.SSL_get1_peer_certificate(t->s);
  uint32_t i;
  if (x == NULL) {
    snprintf(why, size, "tls: the peer gave no certificate to check against the pin");
    return 0;
  }
  fingerprint_hex(x, hex);
  ssl.X509_free(x);
  for (i = 0; i < t->pin->n; i++)
    if (strcmp(mk_strdata(mk_items(t->pin)[i]), hex) == 0) return 1;
  snprintf(why, size, "tls: the peer's certificate is not the one pinned (sha256 %s)", hex);
  return 0;
}

/* Whether host is an IP address's text (verified as an address, and not
** named in SNI, which takes only host names). */
static int is_ip(const char *host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

mkd_tls *mkd_tls_new(const mk_term *config, int fd, int server, const char *host, char *why,
                     size_t size) {
  tls_conf cf;
  const char *bad, *name;
  SSL_CTX *ctx;
  mkd_tls *t;
  if ((bad = ssl_open()) != NULL) { snprintf(why, size, "tls: %s", bad); return NULL; }
  if ((bad = read_conf(config, &cf)) != NULL) { snprintf(why, size, "tls: %s", bad); return NULL; }
  if (server && cf.cert == NULL) {
    snprintf(why, size, "tls: a server needs a certificate (tcp.tls{cert = ..., key = ...})");
    return NULL;
  }
  if ((ctx = context(config, &cf, why, size)) == NULL) return NULL;
  if ((t = malloc(sizeof *t)) == NULL) { snprintf(why, size, "out of memory"); return NULL; }
  t->pin = cf.pin != NULL ? mk_ref(cf.pin) : NULL;
  t->sni = server && cf.sni != NULL ? mk_ref(cf.sni) : NULL;
  ssl.ERR_clear_error();
  if ((t->s = ssl.SSL_new(ctx)) == NULL || ssl.SSL_set_fd(t->s, fd) != 1) {
    ssl_reason("tls: cannot make a session", why, size);
    mkd_tls_free(t);
    return NULL;
  }
  name = cf.server_name ? cf.server_name : host;
  if (server) {
    ssl.SSL_set_accept_state(t->s);
    if (t->sni != NULL) ssl.SSL_set_ex_data(t->s, 0, t);   /* (on_servername) */
    /* A server given CA certificates asks its clients for theirs; so
    ** does one that pins them, which without CAs takes any chain. */
    if (cf.ca && cf.verify)
      ssl.SSL_set_verify(t->s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    else if (cf.pin != NULL)
      ssl.SSL_set_verify(t->s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, any_chain);
  } else {
    ssl.SSL_set_connect_state(t->s);
    if (name != NULL && !is_ip(name))
      ssl.SSL_ctrl(t->s, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, (void *)name);
    if (cf.verify) {
      ssl.SSL_set_verify(t->s, SSL_VERIFY_PEER, NULL);
      if (name != NULL) {
        int ok = is_ip(name) ? ssl.X509_VERIFY_PARAM_set1_ip_asc(ssl.SSL_get0_param(t->s), name)
                             : ssl.SSL_set1_host(t->s, name);
        if (ok != 1) {
          ssl_reason("tls: cannot verify the name", why, size);
          mkd_tls_free(t);
          return NULL;
        }
      }
    } else {
      ssl.SSL_set_verify(t->s, SSL_VERIFY_NONE, NULL);
    }
  }
  return t;
}

void mkd_tls_free(mkd_tls *t) {
  if (t == NULL) return;
  if (t->s != NULL) ssl.SSL_free(t->s);
  mk_unref(t->pin);
  mk_unref(t->sni);
  free(t);
}

/* What a failed call of SSL_* with result r means for the manager. */
static int outcome(mkd_tls *t, int r, const char *what, char *why, size_t size) {
  int e = ssl.SSL_get_error(t->s, r);
  char buf[128];
  switch (e) {
    case SSL_ERROR_WANT_READ: return MKD_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return MKD_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL:
      if (errno != 0) {
        snprintf(why, size, "%s", mkd_strerror(errno, buf, sizeof buf));
        return MKD_TLS_ERROR;
      }
      /* (no error queued and no errno: the peer closed) */
      if (ssl.ERR_peek_error() == 0) {
        snprintf(why, size, "%s: the connection closed", what);
        return MKD_TLS_ERROR;
      }
      /* fall through */
    default: {
      long v = ssl.SSL_get_verify_result(t->s);
      ssl_reason(what, why, size);
      /* (the chain's verdict, where it was asked for: with verify off,
      ** OpenSSL still records one, which is not why this failed) */
      if (v != X509_V_OK && ssl.SSL_get_verify_mode(t->s) != SSL_VERIFY_NONE) {
        size_t n = strlen(why);
        snprintf(why + n, size - n, " (%s)", ssl.X509_verify_cert_error_string(v));
      }
      return MKD_TLS_ERROR;
    }
  }
}

int mkd_tls_handshake(mkd_tls *t, char *why, size_t size) {
  int r;
  ssl.ERR_clear_error();
  errno = 0;
  r = ssl.SSL_do_handshake(t->s);
  if (r == 1) return t->pin == NULL || pinned(t, why, size) ? 1 : MKD_TLS_ERROR;
  r = outcome(t, r, "tls", why, size);
  if (r == 0) {
    snprintf(why, size, "tls: the peer closed during the handshake");
    return MKD_TLS_ERROR;
  }
  return r;
}

ssize_t mkd_tls_read(mkd_tls *t, char *buf, size_t n, char *why, size_t size) {
  int r;
  ssl.ERR_clear_error();
  errno = 0;
  r = ssl.SSL_read(t->s, buf, n > INT32_MAX ? INT32_MAX : (int)n);
  return r > 0 ? r : outcome(t, r, "tls", why, size);
}

ssize_t mkd_tls_write(mkd_tls *t, const char *buf, size_t n, char *why, size_t size) {
  int r;
  ssl.ERR_clear_error();
  errno = 0;
  r = ssl.SSL_write(t->s, buf, n > INT32_MAX ? INT32_MAX : (int)n);
  if (r > 0) return r;
  r = outcome(t, r, "tls", why, size);
  if (r == 0) { snprintf(why, size, "tls: the peer closed"); return MKD_TLS_ERROR; }
  return r;
}

size_t mkd_tls_pending(const mkd_tls *t) {
  int n = ssl.SSL_pending(t->s);
  return n > 0 ? (size_t)n : 0;
}

void mkd_tls_close_notify(mkd_tls *t) {
  ssl.ERR_clear_error();
  (void)ssl.SSL_shutdown(t->s);     /* sent, or not if the socket is full: the FIN follows */
  ssl.ERR_clear_error();
}

const char *mkd_tls_version(const mkd_tls *t) { return ssl.SSL_get_version(t->s); }

/* sys.tls_serial() -> the next configuration's serial.  The
** configurations kept are the process's, so their serials must be too: a
** serial counted in tcp.lua began again at 1 wherever the module was
** loaded again (another Lua state of the process, package.loaded cleared:
** busted between spec files), and two configurations of the same files,
** made before and after a certificate was renewed, were equal records. */
static int l_tls_serial(lua_State *L) {
  static int64_t last;
  lua_pushinteger(L, (lua_Integer)__atomic_add_fetch(&last, 1, __ATOMIC_RELAXED));
  return 1;
}

/* sys.tls_check(config) -> true | nil, why: the configuration read and
** its context built now, and kept with it (configurations, above), so
** that a missing file or a bad key is tcp.tls's answer rather than every
** connection's failure, and its files are read only now. */
static int l_tls_check(lua_State *L) {
  const char *err, *bad;
  char why[512];
  tls_conf cf;
  SSL_CTX *ctx;
  mk_term *t = mkl_toterm(L, 1, &err);
  if (t == NULL) return luaL_error(L, "market.sys.tls_check: %s", err);
  bad = (bad = ssl_open()) != NULL ? bad : read_conf(t, &cf);
  if (bad != NULL) {
    snprintf(why, sizeof why, "tls: %s", bad);
  } else if (kept(t)) {
    mk_unref(t);                /* (checked already: its context stays the one built then) */
    lua_pushboolean(L, 1);
    return 1;
  } else if ((ctx = build(&cf, why, sizeof why)) != NULL) {
    if (keep(t, ctx) != 0) {
      mk_unref(t);
      return luaL_error(L, "market.sys.tls_check: out of memory");
    }
    mk_unref(t);
    /* A record dropped is released when the collector frees its box, and
    ** the collector does not see the context behind it (tens of KB, a CA
    ** file's certificates among them): configurations made in a loop
    ** kept a thousand of them.  A full collection whenever the contexts
    ** kept have doubled since the last one bounds them to twice those in
    ** use, at a cost spread over as many tcp.tls calls. */
    if (nconfigs >= collect_at) {
      lua_gc(L, LUA_GCCOLLECT);
      sweep();
      collect_at = 2 * nconfigs > 64 ? 2 * nconfigs : 64;
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  mk_unref(t);
  lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

/* ---- the peer's certificate (mkd_tls_peer) ---------------------------------- */

/* What the memory BIO b holds, as a string term (NULL: out of memory). */
static mk_term *bio_term(BIO *b) {
  char *data = NULL;
  long n = ssl.BIO_ctrl(b, BIO_CTRL_INFO, 0, (char *)&data);
  return mk_str(n > 0 && data != NULL ? data : "", n > 0 ? (size_t)n : 0);
}

/* A name, RFC 2253's way ("CN=alice,O=Example"). */
static mk_term *name_term(const X509_NAME *name) {
  BIO *b = ssl.BIO_new(ssl.BIO_s_mem());
  mk_term *t;
  if (b == NULL) return NULL;
  ssl.X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
  t = bio_term(b);
  ssl.BIO_free(b);
  return t;
}

/* The subject alternative names: DNS names, addresses, e-mail addresses
** and URIs, as strings, in the certificate's order; other kinds left out. */
static mk_term *names_term(X509 *x) {
  GENERAL_NAMES *gens = ssl.X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  int i, n = gens != NULL ? ssl.OPENSSL_sk_num((const OPENSSL_STACK *)gens) : 0;
  mk_term **v = n > 0 ? calloc((size_t)n, sizeof *v) : NULL;
  mk_term *seq;
  uint32_t k = 0, j;
  for (i = 0; i < n && v != NULL; i++) {
    const GENERAL_NAME *g = ssl.OPENSSL_sk_value((const OPENSSL_STACK *)gens, i);
    const ASN1_STRING *a = NULL;
    char ip[INET6_ADDRSTRLEN];
    if (g->type == GEN_DNS) a = g->d.dNSName;
    else if (g->type == GEN_EMAIL) a = g->d.rfc822Name;
    else if (g->type == GEN_URI) a = g->d.uniformResourceIdentifier;
    if (a != NULL) {
      v[k++] = mk_str((const char *)ssl.ASN1_STRING_get0_data(a), (size_t)ssl.ASN1_STRING_length(a));
    } else if (g->type == GEN_IPADD) {
      int len = ssl.ASN1_STRING_length(g->d.iPAddress);
      const unsigned char *d = ssl.ASN1_STRING_get0_data(g->d.iPAddress);
      if ((len == 4 || len == 16) && inet_ntop(len == 4 ? AF_INET : AF_INET6, d, ip, sizeof ip))
        v[k++] = mk_cstr(ip);
    }
  }
  if (gens != NULL) ssl.GENERAL_NAMES_free(gens);
  if (n > 0 && v == NULL) return NULL;
  seq = mk_seq_new(k);
  for (j = 0; j < k; j++) {
    if (seq != NULL && v[j] != NULL) mk_set(seq, j, v[j]);
    else mk_unref(v[j]);
  }
  free(v);
  return mk_seal(seq);
}

/* A time as seconds since the epoch (0 if it cannot be read). */
static mk_term *time_term(const ASN1_TIME *t) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  return mk_int(t != NULL && ssl.ASN1_TIME_to_tm(t, &tm) == 1 ? (int64_t)timegm(&tm) : 0);
}

/* The serial number in hexadecimal ("0A1B..."). */
static mk_term *serial_term(const X509 *x) {
  BIGNUM *bn = ssl.ASN1_INTEGER_to_BN(ssl.X509_get0_serialNumber(x), NULL);
  char *hex = bn != NULL ? ssl.BN_bn2hex(bn) : NULL;
  mk_term *t = mk_cstr(hex != NULL ? hex : "");
  if (hex != NULL) ssl.CRYPTO_free(hex, __FILE__, __LINE__);
  if (bn != NULL) ssl.BN_free(bn);
  return t;
}

/* The SHA-256 of the certificate (DER), in lower-case hexadecimal. */
static mk_term *fingerprint_term(const X509 *x) {
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  fingerprint_hex(x, hex);
  return mk_cstr(hex);
}

static mk_term *pem_term(X509 *x) {
  BIO *b = ssl.BIO_new(ssl.BIO_s_mem());
  mk_term *t;
  if (b == NULL) return NULL;
  t = ssl.PEM_write_bio_X509(b, x) == 1 ? bio_term(b) : mk_cstr("");
  ssl.BIO_free(b);
  return t;
}

mk_term *mkd_tls_peer(mkd_tls *t) {
  static const char *const fields[] = { "subject", "issuer", "names", "serial", "fingerprint",
                                        "not_before", "not_after", "pem" };
  X509 *x = ssl.SSL_get1_peer_certificate(t->s);
  mk_rtype *rt;
  mk_term *r;
  if (x == NULL) return mk_bool(0);
  if ((rt = mk_rtype_get("tcp-certificate", 15, 8, fields)) == NULL) {
    ssl.X509_free(x);
    return NULL;
  }
  r = mk_rec(rt, name_term(ssl.X509_get_subject_name(x)), name_term(ssl.X509_get_issuer_name(x)),
             names_term(x), serial_term(x), fingerprint_term(x),
             time_term(ssl.X509_get0_notBefore(x)), time_term(ssl.X509_get0_notAfter(x)),
             pem_term(x));
  mk_rtype_unref(rt);
  ssl.X509_free(x);
  return r;
}

void mkd_open_tls(lua_State *L) {
  lua_pushcfunction(L, l_tls_check);
  lua_setfield(L, -2, "tls_check");
  lua_pushcfunction(L, l_tls_serial);
  lua_setfield(L, -2, "tls_serial");
}
