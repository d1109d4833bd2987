/*
** json.h: terms written as JSON (docs/inspect.md, "Terms in JSON"), and
** the growing buffer they are written into.  One encoder for the trace's
** JSON lines (trace.c) and for snapshots (lua/lsnap.c), so that both give
** a term the same form.  The buffer also writes names and messages into
** lines of text (mk_jbuf_addname, mk_jbuf_addtext: trace.c's text lines,
** lua/llog.c, lua/host.c's crash reports).  Internal to the library: not
** installed.
*/
#ifndef MK_JSON_H
#define MK_JSON_H
#include <stddef.h>
#include "term.h"

/* Text being written.  p is malloc'd and owned by whoever holds the
** buffer (free(p) when done); it is NUL-terminated once anything was
** added.  Start from {0}.  oom: an allocation failed, and the text is
** incomplete (nothing more is added). */
typedef struct mk_jbuf {
  char *p;
  size_t n, cap;
  int oom;
} mk_jbuf;

void mk_jbuf_add(mk_jbuf *b, const char *s, size_t n);
void mk_jbuf_adds(mk_jbuf *b, const char *s);

/* A name (a process's, an endpoint's) in a line of text: its control
** bytes (below 0x20, and 0x7f) written as \n, \r, \t or \xHH, so that
** a name made from what a peer sent cannot break the line in two, forge
** another, or drive a terminal (docs/inspect.md, "Names and messages in
** text").  Other bytes, the backslash among them, are written as they
** are.
** mk_name_escaped: the same as a malloc'd string, or NULL when s has
** nothing to escape (or memory ran out: s is then shown as it is).  Both
** show at most MK_NAME_MAX bytes of a name (cut on a character's
** boundary), then " ... (N bytes more)": a name made of a peer's
** megabyte is not a megabyte in every line about its process. */
#define MK_NAME_MAX 256
void mk_jbuf_addname(mk_jbuf *b, const char *s);
char *mk_name_escaped(const char *s);

/* A message (a log line's, a crash report's reason) in text: shown as
** it is but for what could forge a line or drive a terminal.  A line
** break (LF, or CR LF) stays one, and the next line begins with a tab,
** so that no line of a message can pass for a line of its own (a log
** line's timestamp, a report's "market: ... failed"); another CR is \r,
** other control bytes and the C1 controls are \xHH, and so is each
** byte that is not part of a UTF-8 character.  Tabs and the backslash
** are as they are.  mk_text_escaped: the same as a malloc'd string, or
** NULL when s has nothing to change (or memory ran out: s is then shown
** as it is).  It shows at most MK_TEXT_MAX bytes of s (cut on a
** character's boundary) and then " ... (N bytes more)": an error made of
** a peer's 10 MB body is a report of 16 KiB, not of 10 MB, on stderr and
** in a log (the program still has the whole message: a log sink's
** argument, on_crash's reason, the absence its peers see). */
#define MK_TEXT_MAX 16384
void mk_jbuf_addtext(mk_jbuf *b, const char *s, size_t n);
char *mk_text_escaped(const char *s, size_t n);

/* s (n bytes) as a JSON string: ", \ and control characters escaped.
** Bytes that are not UTF-8 become U+FFFD when lax; otherwise returns 0 at
** the first one, having written part of the string (rewind b->n). */
int mk_json_str(mk_jbuf *b, const char *s, size_t n, int lax);

/* Numbers as terms are written: %lld; %.17g, and {"float":"nan"},
** {"float":"inf"}, {"float":"-inf"}. */
void mk_json_int(mk_jbuf *b, long long i);
void mk_json_float(mk_jbuf *b, double f);

/* t's JSON form: null, booleans, numbers (%.17g; {"float":"nan"} and
** the infinities), strings ({"bytes":"<hex>"} when not UTF-8),
** {"wildcard":true}, {"eof":true}, {"record":label,"fields":[...]},
** arrays for sequences.  Returns 0 once the text has passed `end` bytes
** (SIZE_MAX: no bound) or on out of memory; the caller then rewinds
** b->n.  Recurses once per level of t. */
int mk_json_term(mk_jbuf *b, const mk_term *t, size_t end);

#endif
