/*
** cbor.h: terms on the wire, in CBOR (RFC 8949), with libcbor's help.
**
** The encoding is documented for programs in other languages in
** docs/cluster.md, "Terms on the wire"; in short:
**
**   nil, false, true   null, false, true (simple values 22, 20, 21)
**   integer            a CBOR integer (major type 0 or 1)
**   float              a double (0xfb), NaN and the infinities kept
**   string             a byte string (major type 2)
**   sequence           an array
**   record             tag MK_CBOR_TAG_RECORD around [label, field...],
**                      the label a byte string
**   _ / EOF            tag MK_CBOR_TAG_WILD / MK_CBOR_TAG_EOF around null
**
** and the whole term wrapped once in tag MK_CBOR_TAG_TERM around
** [MK_CBOR_VERSION, term].  The tags are taken from the first-come-first-
** served range of IANA's CBOR tag registry (32768 and up), in a block
** spelling "mk" (0x6d6b0000); they are not registered.
**
** Shared subterms are written out wherever they occur (the text of a term
** is the tree it stands for, as for mk_repr), so an encoding has at most
** mk_term_size(t) items, and a term that repeats a long string encodes as
** large as its text.
*/
#ifndef MK_CBOR_H
#define MK_CBOR_H

#include <stddef.h>
#include <stdint.h>

#include "term.h"

#define MK_CBOR_VERSION      1
#define MK_CBOR_TAG_TERM     0x6d6b0000u   /* [version, term] */
#define MK_CBOR_TAG_RECORD   0x6d6b0001u   /* [label, field...] */
#define MK_CBOR_TAG_WILD     0x6d6b0002u   /* null */
#define MK_CBOR_TAG_EOF      0x6d6b0003u   /* null */

/*
** Encode t (borrowed).  Returns malloc'd bytes the caller frees, their
** count in *len; NULL only when memory runs out.  Any term encodes, a
** unifier larger than the size limit too (the decoder in force then may
** refuse it).  Recurses once per level, like term.h's algorithms.
*/
unsigned char *mk_cbor_encode(const mk_term *t, size_t *len);

/*
** Append the encoding of t (borrowed) alone, without the version wrapper,
** to the buffer *buf of *cap bytes whose first *len are used (malloc'd
** and owned by the caller; NULL and 0 to start one), growing it with
** realloc: for a term inside a larger CBOR item, written without a copy
** (the cluster's envelope, drivers/lcluster.c).  0, *len then counting
** the bytes added; or -1 when memory runs out, *len as it was and *buf
** and *cap what they are now (the buffer may have moved).
*/
int mk_cbor_append(const mk_term *t, unsigned char **buf, size_t *len, size_t *cap);

/*
** Decode exactly one encoded term from buf[0..len).  Returns a new
** reference, or NULL with *why (if why is not NULL) set to a static
** reason: not CBOR (malformed, truncated), trailing bytes after the term,
** no version tag, an unsupported version, an unknown tag, a map, an
** indefinite length, an integer beyond 64 bits signed, a bad record
** label, a term past the depth or size limit in force (term.h), or out
** of memory.  A streaming walk with a stack of its own, at most the depth
** limit deep: it never recurses, and allocates nothing for a length in
** the input before the bytes that length announces are known to be there
** (every item takes one byte at least).
*/
mk_term *mk_cbor_decode(const unsigned char *buf, size_t len, const char **why);

/*
** Heads, for a container of terms framed without decoding them (the
** cluster's batches, drivers/lcluster.c).  A head is a major type (0 to
** 7) and its argument (a length, a count, an integer's magnitude, a tag).
**
** mk_cbor_head_len: the bytes of the shortest head for argument v (1, 2,
** 3, 5 or 9).  mk_cbor_put_head: that head of major type mt written at p,
** which has room for it; returns its length.
**
** mk_cbor_head: the head at d[*at..len), into *mt and *v, *at moved past
** it; 0, or -1 when it is cut short or of a kind no term is written with
** (reserved, indefinite).  mk_cbor_item_end: the end of the one data
** item at d[at..len), or 0 when it is cut short, a map or of an
** indefinite length (no term is either); it walks without recursion and
** believes a count only as far as the bytes go.  Neither judges what the
** item holds: that is mk_cbor_decode's.
*/
size_t mk_cbor_head_len(uint64_t v);
size_t mk_cbor_put_head(unsigned char *p, unsigned mt, uint64_t v);
int mk_cbor_head(const unsigned char *d, size_t len, size_t *at, unsigned *mt, uint64_t *v);
size_t mk_cbor_item_end(const unsigned char *d, size_t len, size_t at);

#endif
