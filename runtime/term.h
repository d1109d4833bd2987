/*
** term.h: immutable terms, the values of topics and messages (DESIGN §2).
**
** A term is a reference-counted, immutable tree: nil, false, true, integers,
** floats, byte strings, records (an interned record type plus fields),
** sequences, the wildcard and EOF.  Single-threaded: the counts are plain.
**
** Ownership.  Every function that returns an `mk_term *` returns a NEW
** reference the caller must release with mk_unref(), unless it says
** "borrowed".  Builders that take sub-terms STEAL the references passed in
** (like Python's PyTuple_SET_ITEM), so `mk_set(s, 0, mk_int(1))` leaks
** nothing.  The singletons (nil, booleans, wildcard, EOF) ignore counting.
**
** Depth.  Every term records how deeply it nests: an atom has depth 0, a
** record or sequence 1 + the depth of its deepest item (1 when empty).  No
** term deeper than a process-wide limit can be built: mk_seal (and so
** mk_rec, and market.h's mk_record) refuses it, and the Lua binding raises
** an error in the process that tried.  Every algorithm over terms
** (equality, unification, repr, conversion to and from Lua) either loops
** or recurses once per level, so the C stack it needs is bounded by
** MK_TERM_DEPTH_MAX, the highest limit one may set: at most 160 bytes a
** level on x86-64 in the default build (1.6 MB at 10000 levels; twice that
** under AddressSanitizer), as spec/c/test_term.c and test_host.c measure.
** Freeing a term needs no stack at all.
**
** Size.  Terms are DAGs: an item may be shared, so `t = pair(t, t)` forty
** times over makes 41 terms in memory.  The algorithms over terms read a
** term as the tree it stands for, though, and that tree has 2^41 - 1
** nodes.  So every term also records its size, the number of nodes of
** that tree: 1 for an atom, 1 + the sizes of its items for a record or a
** sequence.  No term larger than a process-wide size limit can be built:
** mk_seal refuses it as it refuses a term too deep, and the Lua binding
** raises an error in the process that tried.  So every algorithm over
** terms is linear in the size: mk_equal and mk_unifies compare at most
** min(size(a), size(b)) pairs of nodes, merge (mk_unify) visits as many
** and makes at most one compound for each, routing (route.c) flattens a
** topic or a message into size(t) tokens, mk_repr writes size(t) nodes,
** and the conversions to and from Lua visit each node once.  An atom or a
** record label is compared or written whole wherever it occurs, though:
** a long string that occurs many times costs its length each time, in
** mk_repr's text and in mk_equal on two such terms built apart.
*/
#ifndef MK_TERM_H
#define MK_TERM_H

#include <stddef.h>
#include <stdint.h>

typedef enum mk_kind {
  MK_NIL, MK_FALSE, MK_TRUE, MK_INT, MK_FLOAT, MK_STR,
  MK_REC, MK_SEQ, MK_WILD, MK_EOF
} mk_kind;

typedef struct mk_rtype mk_rtype;
typedef struct mk_term mk_term;

/*
** A record type: a label and an arity, interned so that two record types
** with the same label and arity are the same pointer.  Field names are
** optional (NULL until someone names them).  Reference counted: every record
** term and every holder of mk_rtype_get() owns one reference.
*/
struct mk_rtype {
  uint32_t refs;
  uint32_t arity;
  uint32_t hash;
  size_t labellen;
  char *label;            /* owned, NUL-terminated, no NUL inside */
  char **names;           /* owned array of `arity` owned strings, or NULL */
  mk_rtype *chain;        /* intern table bucket chain (term.c only) */
};

struct mk_term {
  uint32_t refs;          /* MK_IMMORTAL for the static singletons */
  uint8_t kind;           /* mk_kind */
  uint8_t ground;         /* 1 when no wildcard occurs inside */
  uint16_t depth;         /* see "Depth" above; computed when sealed */
  uint32_t hash;          /* 0 until computed: read it with mk_hash */
  uint32_t n;             /* string length / record arity / sequence length */
  union {
    int64_t i;            /* MK_INT */
    double f;             /* MK_FLOAT */
    mk_rtype *rt;         /* MK_REC: owned reference */
  } v;
  /* followed by char[n+1] (MK_STR), or by mk_term *[n] and then the
  ** size as a uint32_t (MK_REC, MK_SEQ; see "Size" above): an atom's size
  ** is 1, and atoms, the most numerous terms, have no room to spare */
};

#define MK_IMMORTAL UINT32_MAX

/*
** The depth limit (see "Depth" above).  mk_term_set_depth_limit sets it for
** the whole program (terms are single-threaded) and returns 0, or -1 when n
** is 0 or above MK_TERM_DEPTH_MAX (the limit is then unchanged).  Terms
** built earlier stay valid when the limit is lowered.
*/
#define MK_TERM_DEPTH_DEFAULT  1000
#define MK_TERM_DEPTH_MAX      10000
size_t mk_term_depth_limit(void);
int mk_term_set_depth_limit(size_t n);

/*
** The size limit (see "Size" above), in nodes, set and read like the
** depth limit: mk_term_set_size_limit returns 0, or -1 when n is 0 or
** above MK_TERM_SIZE_MAX.  mk_term_size(t) is the size of t.  Every term
** has fewer than 2 * MK_TERM_SIZE_MAX nodes (see mk_unify), so the size of
** a compound is kept exact in 32 bits.  The maximum is 2^24 nodes because
** routing a term takes 16 bytes of scratch a node (route.c's flatten):
** 256 MiB at the maximum, 16 MiB at the default.
*/
#define MK_TERM_SIZE_DEFAULT   ((size_t)1 << 20)
#define MK_TERM_SIZE_MAX       ((size_t)1 << 24)
size_t mk_term_size_limit(void);
int mk_term_set_size_limit(size_t n);
size_t mk_term_size(const mk_term *t);

/* Payload access. */
#define mk_strdata(t)   ((char *)((t) + 1))
#define mk_items(t)     ((mk_term **)((t) + 1))
#define mk_kindof(t)    ((mk_kind)(t)->kind)

/* Reference counting. mk_ref returns its argument. NULL is accepted. */
mk_term *mk_ref(mk_term *t);
void mk_unref(mk_term *t);

/* Atoms (new references). */
mk_term *mk_nil(void);
mk_term *mk_bool(int b);
mk_term *mk_int(int64_t i);
mk_term *mk_float(double f);     /* an integral float in int64 range becomes MK_INT, as Lua table keys do */
mk_term *mk_str(const char *s, size_t len);
mk_term *mk_cstr(const char *s);
/*
** A string term filled in place, for a reader that would otherwise read
** into a buffer of its own and copy (a socket's chunk: docs/performance.md,
** "Chunks read in place").  mk_str_room(cap) gives a term with room for
** cap bytes at mk_strdata(t), NULL when out of memory; write at most cap
** bytes there, then mk_str_fill(t, len) makes it the string of its first
** len bytes (len <= cap) and returns it: t itself when len fills at
** least three quarters of the room, else a copy that fits (t freed), or
** NULL when out of memory (t freed too).  Until mk_str_fill, t is no term: do not hash, share
** or send it (mk_unref frees it).
*/
mk_term *mk_str_room(size_t cap);
mk_term *mk_str_fill(mk_term *t, size_t len);
mk_term *mk_wild(void);
mk_term *mk_eof(void);

/*
** Record types.  mk_rtype_get interns (label, arity) and returns a new
** reference; names may be NULL or an array of `arity` C strings (NULL
** items read as ""), which are copied.  The first names a type is given
** are its field names for as long as it lives: later names must be the
** same, since other holders of the type read its fields by them.
** Returns NULL, with errno set, when the names differ from the type's
** (EEXIST), when the label holds a NUL byte (EINVAL: labels, like field
** names, are C strings, printed and compared as such by every layer
** above), and on allocation failure (ENOMEM).
*/
mk_rtype *mk_rtype_get(const char *label, size_t labellen, uint32_t arity,
                       const char *const *names);
void mk_rtype_ref(mk_rtype *rt);
void mk_rtype_unref(mk_rtype *rt);
/* Index of field `name` in rt, or -1. */
int mk_rtype_field(const mk_rtype *rt, const char *name);

/*
** Compound builders.  mk_rec_new/mk_seq_new return a term whose slots are
** mk_nil(); fill them with mk_set (steals `item`, which must be sealed),
** then mk_seal() it before any other use (hashing, comparing, routing).
** A NULL item (a builder that failed) makes the seal fail: NULL.
** mk_rec_new takes a new reference to rt (the caller keeps its own).
** mk_seal takes the caller's reference and gives it back: it returns the
** compound, or, when the compound nests deeper than the depth limit or
** is larger than the size limit, releases it and returns NULL
** (mk_seal(NULL) is NULL).  So always use what it returns:
**   t = mk_seal(t); if (t == NULL) ...
*/
mk_term *mk_rec_new(mk_rtype *rt);
mk_term *mk_seq_new(uint32_t n);
void mk_set(mk_term *compound, uint32_t i, mk_term *item);
mk_term *mk_seal(mk_term *compound);

/* Convenience: a sealed record of rt with `n == rt->arity` stolen fields.
** NULL when out of memory, when a field is NULL, or beyond the depth or
** the size limit (the fields are released all the same). */
mk_term *mk_rec(mk_rtype *rt, ...);

/* Structural equality and hashing (equal terms hash equal). */
int mk_equal(const mk_term *a, const mk_term *b);
uint32_t mk_hash(const mk_term *t);

/* Symmetric unification: wildcards on either side, at any depth. */
int mk_unifies(const mk_term *a, const mk_term *b);
/*
** Most general unifier, or NULL when a and b do not unify (or out of
** memory).  The unifier is never deeper than the deeper of a and b, so it
** is made even when the depth limit was lowered after they were built.
** It can be larger than both (unify([x, _], [_, x]) is [x, x]) but never
** than size(a) + size(b) - 1, and it is made whatever the size limit, up
** to 2 * MK_TERM_SIZE_MAX - 1 nodes, which two terms of at most
** MK_TERM_SIZE_MAX nodes never exceed.  Only unifiers fed back as inputs
** can, and then the unifier is refused (NULL): so no term ever has 2 *
** MK_TERM_SIZE_MAX nodes or more.  The
** Lua binding takes from Lua no term larger than the size limit, a
** unifier included, so that unifiers cannot be fed back to grow there.
*/
mk_term *mk_unify(mk_term *a, mk_term *b);

/*
** Readable text, e.g.  chat-line("bob", "hi")  [1, 2, _]  #eof.
** Returns a malloc'd NUL-terminated string the caller frees, and its length
** in *len when len is not NULL.  NULL on allocation failure.
*/
char *mk_repr(const mk_term *t, size_t *len);
/*
** The same, cut short: when the text is longer than `max` bytes, its first
** `max` bytes followed by "...", found without writing the rest (a term
** that shares subterms can print enormous).  For terms the runtime shows
** but did not choose: trace lines, warnings, failure reports.
*/
char *mk_repr_max(const mk_term *t, size_t max, size_t *len);
/*
** Read a term from text as mk_repr writes it: nil, false, true, integers,
** floats (with a '.' or an exponent; nan, inf, -inf), strings in double
** quotes with mk_repr's escapes (\" \\ \n \t \r \xHH), [items],
** label(fields), _ and #eof, with blanks anywhere between.  A label is a
** run of bytes other than blanks and ( ) [ ] , " followed by '(', and
** names a record type by label and arity (market.record's field names, if
** any, are the type's already).  Returns a new term, or NULL with *err (if
** err is not NULL) set to a static reason: malformed text, a term past the
** depth or size limit, or out of memory.  *pos (if pos is not NULL) gets
** the offset in s where reading stopped.  `market --trace-topic` reads
** its pattern so.
*/
mk_term *mk_read(const char *s, size_t len, size_t *pos, const char **err);

/* What the runtime's own traces and warnings show of a term, in bytes. */
#define MK_REPR_SHOWN  200

/* The term-layer memory counters, for leak checks in tests. */
size_t mk_term_live(void);

#endif
